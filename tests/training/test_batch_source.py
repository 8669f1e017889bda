"""The loop's data seam: any BatchSource (here one that samples from the current policy and reuses each
buffer for several updates, as PPO does) trains through the one loop, and its state and an objective's
state travel in checkpoints so an interrupted run resumes exactly."""
import pytest
import torch

from alignkit.data.chat import IGNORE
from alignkit.data.sft import SFTExample
from alignkit.models.tiny import tiny_model, tiny_tokenizer
from alignkit.training import batch_source
from alignkit.training.batch_source import ExampleSource
from alignkit.training.loop import train
from alignkit.training.sft import SFTObjective
from tests.helpers.crash import Crash, crash_at
from tests.helpers.training import WORDS, cfg, make_examples


class RolloutSource:
    """Every `reuse` steps, samples completions of seeded prompts from the policy as it is then; each
    buffer serves `reuse` updates, in a fresh seeded order each time (PPO's epochs over one rollout)."""

    def __init__(self, tok, *, seed=0, prompts=4, new_tokens=4, micro_size=2, reuse=2):
        self.tok, self.prompts, self.new_tokens = tok, prompts, new_tokens
        self.micro_size, self.reuse = micro_size, reuse
        self.collate = SFTObjective().collate
        self.generator = torch.Generator().manual_seed(seed)
        self.buffer: list[SFTExample] = []
        self.uses_left = 0
        self.rollouts = 0

    def next_step(self, step, model):
        if self.uses_left == 0:
            self.buffer = self._roll_out(model)
            self.uses_left = self.reuse
            self.rollouts += 1
        self.uses_left -= 1
        order = torch.randperm(len(self.buffer), generator=self.generator).tolist()
        shuffled = [self.buffer[i] for i in order]
        return [self.collate(shuffled[i:i + self.micro_size]) for i in range(0, len(shuffled), self.micro_size)]

    @torch.no_grad()
    def _roll_out(self, model):
        model.eval()
        buffer = []
        for _ in range(self.prompts):
            picks = torch.randint(len(WORDS), (3,), generator=self.generator).tolist()
            prompt = self.tok.encode(" ".join(WORDS[i] for i in picks))
            ids = list(prompt)
            for _ in range(self.new_tokens):
                logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
                ids.append(int(torch.multinomial(torch.softmax(logits, -1), 1, generator=self.generator)))
            buffer.append(SFTExample(ids, [IGNORE] * len(prompt) + ids[len(prompt):]))
        return buffer

    def state_dict(self):
        return {"generator": self.generator.get_state(), "buffer": self.buffer, "uses_left": self.uses_left,
                "rollouts": self.rollouts}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])
        self.buffer, self.uses_left, self.rollouts = state["buffer"], state["uses_left"], state["rollouts"]

    def steps_per_epoch(self):
        return None

    def epoch(self):
        return float(self.rollouts)


def test_a_rollout_source_trains_through_the_loop_and_resumes_exactly(tmp_path):
    tok = tiny_tokenizer()
    run_cfg = lambda path: cfg(path, max_steps=8, save_every=3)  # noqa: E731
    full_source = RolloutSource(tok)
    full = train(tiny_model(tok), SFTObjective(), source=full_source, cfg=run_cfg(tmp_path / "full"))
    assert [r["step"] for r in full.history] == list(range(1, 9))
    assert full_source.rollouts == 4 and [r["epoch"] for r in full.history] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert full.history[0]["units"] == 16  # 4 prompts x 4 sampled tokens, over 2 micro-batches

    run_dir = tmp_path / "resumed"
    with pytest.raises(Crash):
        train(tiny_model(tok), SFTObjective(), source=RolloutSource(tok), cfg=run_cfg(run_dir), on_step=crash_at(5))
    # The checkpoint at step 3 falls in the middle of a buffer sampled by the step-2 policy: only the
    # source's saved state, not a new rollout from the step-3 weights, gives back the same updates.
    resumed = train(tiny_model(tok), SFTObjective(), source=RolloutSource(tok), cfg=run_cfg(run_dir))
    assert [r["step"] for r in resumed.history] == [4, 5, 6, 7, 8]
    for r in resumed.history:
        expected = full.history[r["step"] - 1]
        assert r["loss"] == pytest.approx(expected["loss"], rel=1e-6), r["step"]
        assert r["units"] == expected["units"] and r["epoch"] == expected["epoch"]


class AdaptiveSFT(SFTObjective):
    """SFT loss times a coefficient that each step grows while the mean NLL is above a target and shrinks
    below it, as an adaptive KL coefficient does."""

    def __init__(self, target: float):
        super().__init__()
        self.target, self.coefficient = target, 1.0

    def loss(self, model, batch):
        nll, metrics = super().loss(model, batch)
        return nll * self.coefficient, {**metrics, "nll": float(nll.detach())}

    def after_step(self, record):
        self.coefficient *= 1.25 if record["nll"] > self.target else 0.8

    def state_dict(self):
        return {"coefficient": self.coefficient}

    def load_state_dict(self, state):
        self.coefficient = state["coefficient"]


def test_an_objective_with_state_resumes_exactly(tmp_path):
    tok = tiny_tokenizer()
    data = make_examples(tok, 10)
    run_cfg = lambda path: cfg(path, max_steps=8, save_every=3, lr=3e-3)  # noqa: E731
    full_objective = AdaptiveSFT(target=5.0)
    full = train(tiny_model(tok), full_objective, data, run_cfg(tmp_path / "full"))
    assert len({round(r["loss"] / r["nll"], 6) for r in full.history}) > 2  # the coefficient moved

    with pytest.raises(Crash):
        train(tiny_model(tok), AdaptiveSFT(target=5.0), data, run_cfg(tmp_path / "r"), on_step=crash_at(5))
    objective = AdaptiveSFT(target=5.0)
    resumed = train(tiny_model(tok), objective, data, run_cfg(tmp_path / "r"))
    assert [r["step"] for r in resumed.history] == [4, 5, 6, 7, 8]
    for r in resumed.history:
        assert r["loss"] == pytest.approx(full.history[r["step"] - 1]["loss"], rel=1e-6), r["step"]
    assert objective.coefficient == pytest.approx(full_objective.coefficient)


def test_the_example_source_continues_from_its_state():
    data = make_examples(tiny_tokenizer(), 7)
    ids = lambda examples: [e.input_ids for e in examples]  # noqa: E731
    make = lambda: ExampleSource(data, ids, batch_size=2, grad_accum=3, seed=4)  # noqa: E731
    whole, first = make(), make()
    steps = [whole.next_step(s) for s in range(5)]
    for s in range(2):
        first.next_step(s)
    second = make()
    second.load_state_dict(first.state_dict())
    assert [second.next_step(s) for s in range(2, 5)] == steps[2:]
    assert second.steps_per_epoch() == 2 and second.epoch() == pytest.approx(15 / 4)  # 4 micro-batches an epoch


def test_each_process_takes_every_world_th_micro_batch(monkeypatch):
    data = list(range(12))
    seen = []
    for rank in (0, 1):
        monkeypatch.setattr(batch_source, "rank_world", lambda rank=rank: (rank, 2))
        source = ExampleSource(data, list, batch_size=2, grad_accum=1, seed=0)
        seen.append([x for s in range(3) for x in source.next_step(s)[0]])
    assert sorted(seen[0] + seen[1]) == data  # one epoch, split between the processes without overlap


def test_a_source_without_epochs_needs_max_steps(tmp_path):
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match="max_steps"):
        train(tiny_model(tok), SFTObjective(), source=RolloutSource(tok), cfg=cfg(tmp_path, max_steps=0))


def test_train_takes_examples_or_a_source(tmp_path):
    tok = tiny_tokenizer()
    with pytest.raises(TypeError, match="either"):
        train(tiny_model(tok), SFTObjective(), make_examples(tok, 4), cfg(tmp_path), source=RolloutSource(tok))
    with pytest.raises(TypeError, match="either"):
        train(tiny_model(tok), SFTObjective(), cfg=cfg(tmp_path))
