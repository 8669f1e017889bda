"""The chunked loss path (training/chunked_logprobs.py): the output layer, tempered log-softmax, gather and
entropy a chunk of positions at a time from the final hidden states, with gradients. It must give the plain
path's log-probs, losses and gradients in every layout, with LoRA, with a value head and a temperature, for
every objective, and never keep or build more than a chunk's [positions, vocabulary] tensors."""
import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from alignkit.data.packing import target_positions
from alignkit.data.pref_examples import build_examples, feedback_items
from alignkit.data.preference import Feedback
from alignkit.models.lora import LoraConfig, apply_lora
from alignkit.models.tiny import tiny_model, tiny_tokenizer
from alignkit.rl.logprobs import completion_logprobs, completion_scores
from alignkit.rl.objective import PolicyGradientObjective, PolicyLossConfig
from alignkit.rl.value_head import ActorCritic
from alignkit.training import chunked_logprobs
from alignkit.training.chunked_logprobs import chunked_scores, chunked_token_scores, head_and_body
from alignkit.training.forward import packed_forward
from alignkit.training.kto import KTOObjective
from alignkit.training.losses import token_logprobs
from alignkit.training.pref_run import make_objective
from alignkit.training.preference import PairwiseObjective, PrefLossConfig, RankingObjective
from alignkit.training.reference import LiveReference, pack_sequences, sequence_logps
from alignkit.training.sft import SFTObjective
from tests.helpers.rl_runs import hand_batch
from tests.helpers.training import make_examples
from tests.rl.test_ppo import ppo_batch, random_head
from tests.training.test_forward import group_batch

LAYOUTS = ("packed", "padded", "shared_prompt")


def trainable_grads(model) -> dict:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def assert_same_grads(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys() and got
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def lora_model(tok):
    model = apply_lora(tiny_model(tok), LoraConfig(enabled=True, r=4, alpha=8))
    with torch.no_grad():  # lora_B starts at zero: make the adapter change the numbers
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return model


# ------------------------------------------------------------------------------------------ the pure function

@pytest.mark.parametrize("chunk", [1, 3, 7, 50])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_token_scores_follow_the_formula_and_its_gradient(chunk, temperature):
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(16, 30)
    hidden = torch.randn(7, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 30, (7,), generator=g)
    w_lp, w_ent = torch.randn(7, generator=g), torch.randn(7, generator=g)

    logp, entropy = chunked_token_scores(hidden, head, targets, chunk=chunk, temperature=temperature, entropy=True)
    (logp * w_lp + entropy * w_ent).sum().backward()
    got = (hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone())
    hidden.grad, head.weight.grad, head.bias.grad = None, None, None

    log_probs = torch.log_softmax(head(hidden) / temperature, dim=-1)
    expected_lp = log_probs[torch.arange(7), targets]
    expected_ent = -(log_probs.exp() * log_probs).sum(-1)
    (expected_lp * w_lp + expected_ent * w_ent).sum().backward()
    torch.testing.assert_close(logp, expected_lp.detach())
    torch.testing.assert_close(entropy, expected_ent.detach())
    for a, b in zip(got, (hidden.grad, head.weight.grad, head.bias.grad)):
        torch.testing.assert_close(a, b)
    with torch.no_grad():  # forward only: no checkpointing, the same numbers
        lp_only, none = chunked_token_scores(hidden, head, targets, chunk=chunk, temperature=temperature)
    assert none is None
    torch.testing.assert_close(lp_only, expected_lp.detach())


def test_chunked_token_scores_of_no_positions_and_bad_settings():
    head = torch.nn.Linear(4, 9)
    hidden = torch.zeros(0, 4, requires_grad=True)
    logp, _ = chunked_token_scores(hidden, head, torch.zeros(0, dtype=torch.long), chunk=2)
    assert logp.shape == (0,) and logp.requires_grad
    with pytest.raises(ValueError, match="chunk"):
        chunked_token_scores(hidden, head, torch.zeros(0, dtype=torch.long), chunk=0)
    with pytest.raises(ValueError, match="temperature"):
        chunked_token_scores(hidden, head, torch.zeros(0, dtype=torch.long), chunk=2, temperature=0)


# ------------------------------------------------------------------------------------------ through the model

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("lora", [False, True])
def test_chunked_log_probs_and_gradients_equal_the_plain_path_in_every_layout(layout, lora):
    tok = tiny_tokenizer("chatml")
    model = lora_model(tok) if lora else tiny_model(tok)
    batch = group_batch()
    keep = target_positions(batch["targets"])
    targets = batch["targets"][0, keep]
    weights = torch.linspace(-1, 2, keep.numel())

    plain = token_logprobs(packed_forward(model, batch, keep, layout=layout).logits[0], targets)
    (plain * weights).sum().backward()
    expected = trainable_grads(model)
    scores = chunked_scores(model, batch, keep, targets, chunk=5, layout=layout)
    assert keep.numel() > 5 and keep.numel() % 5  # several chunks and a remainder
    (scores.logprobs * weights).sum().backward()
    torch.testing.assert_close(scores.logprobs, plain.detach(), rtol=1e-5, atol=1e-5)
    assert_same_grads(trainable_grads(model), expected)
    if lora:
        assert all("lora_" in name for name in expected)
    # the output layer is back in place after the chunked forward
    assert type(model.get_output_embeddings()) is torch.nn.Linear


@pytest.mark.parametrize("layout,critic", [(layout, False) for layout in ("auto",) + LAYOUTS] + [("auto", True)])
def test_rl_scores_with_temperature_entropy_and_values_equal_the_plain_path(layout, critic):
    tok = tiny_tokenizer("chatml")
    ac = random_head(ActorCritic(tiny_model(tok), tiny_model(tok, seed=1) if critic else None))
    batch = group_batch()
    n = int((batch["targets"] >= 0).sum())
    g = torch.Generator().manual_seed(3)
    w = torch.randn(3, n, generator=g)
    results = {}
    for chunk in (0, 4):
        s = completion_scores(ac, batch, 0.7, values=True, entropy=True, entropy_grad=True, layout=layout,
                              chunk=chunk)
        (s.logprobs * w[0] + s.entropy * w[1] + s.values * w[2]).sum().backward()
        results[chunk] = (s, trainable_grads(ac))
    (plain, plain_grads), (chunked, chunked_grads) = results[0], results[4]
    for name in ("logprobs", "entropy", "values"):
        torch.testing.assert_close(getattr(chunked, name), getattr(plain, name), rtol=1e-5, atol=1e-5)
    assert torch.equal(chunked.tokens, plain.tokens)
    assert_same_grads(chunked_grads, plain_grads)
    # without entropy_grad the entropy is a metric: no graph
    assert completion_scores(ac, batch, 0.7, entropy=True, layout=layout, chunk=4).entropy.grad_fn is None
    with torch.no_grad():
        torch.testing.assert_close(completion_logprobs(ac.policy, batch, 0.7, layout=layout, chunk=4),
                                   completion_logprobs(ac.policy, batch, 0.7, layout=layout), rtol=1e-5, atol=1e-5)


class LargestVocabRows(TorchDispatchMode):
    """The most rows of any [rows, vocabulary] tensor an operation creates (views left out), forward and
    backward."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.rows = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if torch.is_tensor(t) and not func.is_view and t.dim() >= 1 and t.shape[-1] == self.vocab:
                self.rows = max(self.rows, t.numel() // self.vocab)
        return out


@pytest.mark.parametrize("chunk", [0, 4])
def test_no_more_than_a_chunk_of_logits_is_kept_for_backward_or_built(chunk):
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok)
    vocab = model.config.vocab_size
    batch = group_batch()
    targets = int((batch["targets"] >= 0).sum())
    weight = model.get_output_embeddings().weight
    kept = []

    def pack(t):  # every tensor autograd keeps for backward, except views of the output layer's weight
        if t.dim() >= 1 and t.shape[-1] == vocab and t.untyped_storage().data_ptr() != weight.untyped_storage().data_ptr():
            kept.append(t.numel() // vocab)
        return t

    built = LargestVocabRows(vocab)
    with built:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _ = SFTObjective(chunk).loss(model, batch)
        loss.backward()
    if chunk:
        assert sum(kept) <= chunk and built.rows <= chunk
    else:  # the plain path, for contrast: the whole [targets, vocabulary] logits
        assert sum(kept) >= targets and built.rows == targets


def test_a_model_whose_head_cannot_be_split_takes_the_plain_path():
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok)
    model.config.final_logit_softcapping = 30.0  # a Gemma-2 style model: logits are not the head's output alone
    assert head_and_body(model) is None
    batch = group_batch()
    keep = target_positions(batch["targets"])
    assert chunked_scores(model, batch, keep, batch["targets"][0, keep], chunk=4) is None
    chunked, _ = SFTObjective(4).loss(model, batch)
    plain, _ = SFTObjective(0).loss(model, batch)
    assert float(chunked.detach()) == float(plain.detach())


# ------------------------------------------------------------------------------------------ every objective

def user(text):
    return [{"role": "user", "content": text}]


def reply(text):
    return [{"role": "assistant", "content": text}]


def pref_examples(tok, responses_per_prompt=2):
    rows = [("What is the capital of France?", ["Paris.", "It is Rome, I believe, or maybe Madrid.", "Lyon"]),
            ("Say hello", ["hello world", "no", "hi there, friend"]),
            ("List three numbers", ["1 2 3", "one two three four five six", "seven"])]
    items = [(user(p), [reply(r) for r in rs[:responses_per_prompt]], None, None, "mem", i + 1, "line")
             for i, (p, rs) in enumerate(rows)]
    return build_examples(items, tok, max_length=256)[0]


def kto_examples(tok):
    feedback = [Feedback(user(p), reply(r), good, "m", i) for i, (p, r, good) in enumerate(
        [("q1", "the quick fox", True), ("q1", "dog", False), ("q2", "one two", True), ("q3", "three four", False)])]
    return build_examples(feedback_items(feedback), tok, max_length=256)[0]


def sft_case(tok, model, chunk):
    objective = SFTObjective(chunk)
    return objective, objective.collate(make_examples(tok, 4))


def dpo_case(tok, model, chunk):
    live = LiveReference(tiny_model(tok, seed=7), chunk=chunk)  # a reference that differs from the policy
    objective = PairwiseObjective(PrefLossConfig(loss="dpo", beta=0.5, reference="live"), live,
                                  loss_chunk_size=chunk)
    return objective, objective.collate(pref_examples(tok))


def simpo_case(tok, model, chunk):
    objective = make_objective(PrefLossConfig(loss="simpo", simpo_gamma=0.3), loss_chunk_size=chunk)
    return objective, objective.collate(pref_examples(tok))


def rrhf_case(tok, model, chunk):
    objective = RankingObjective(PrefLossConfig(loss="rrhf"), loss_chunk_size=chunk)
    return objective, objective.collate(pref_examples(tok, 3))


def kto_case(tok, model, chunk):
    objective = KTOObjective(PrefLossConfig(loss="kto", beta=0.3, reference="live"),
                             LiveReference(tiny_model(tok, seed=7), chunk=chunk), loss_chunk_size=chunk)
    return objective, objective.collate(kto_examples(tok))


def grpo_case(tok, model, chunk):
    cfg = PolicyLossConfig(algo="grpo", kl_coef=0.2, entropy_coef=0.3)
    return PolicyGradientObjective(cfg, temperature=0.7, loss_chunk_size=chunk), hand_batch(tok, model)


def ppo_case(tok, model, chunk):
    cfg = PolicyLossConfig(algo="ppo", vf_coef=0.3)
    return PolicyGradientObjective(cfg, temperature=0.7, loss_chunk_size=chunk), ppo_batch(tok, model)


CASES = {"sft": sft_case, "dpo": dpo_case, "simpo": simpo_case, "rrhf": rrhf_case, "kto": kto_case,
         "grpo": grpo_case, "ppo": ppo_case}


@pytest.mark.parametrize("name", list(CASES))
def test_every_objective_gives_the_plain_loss_metrics_and_gradients_when_chunked(name, monkeypatch):
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok)
    if name == "ppo":
        model = random_head(ActorCritic(model))
    chunks_run = []
    real = chunked_logprobs.chunked_token_scores

    def counted(hidden, *args, **kwargs):
        chunks_run.append(hidden.shape[0])
        return real(hidden, *args, **kwargs)

    monkeypatch.setattr(chunked_logprobs, "chunked_token_scores", counted)
    results = {}
    for chunk in (0, 3):
        objective, batch = CASES[name](tok, model, chunk)
        assert objective.loss_chunk_size == chunk
        chunks_run.clear()
        loss, metrics = objective.loss(model, copy.deepcopy(batch))
        loss.backward()
        assert bool(chunks_run) == bool(chunk)  # the chunked path ran exactly when asked for
        results[chunk] = (float(loss), metrics, trainable_grads(model))
    (loss0, metrics0, grads0), (loss3, metrics3, grads3) = results[0], results[3]
    assert loss3 == pytest.approx(loss0, rel=1e-5, abs=1e-6)
    assert metrics3.keys() == metrics0.keys()
    for key in metrics0:
        if key != "update_tokens_per_s":
            assert metrics3[key] == pytest.approx(metrics0[key], rel=1e-4, abs=1e-5), key
    assert_same_grads(grads3, grads0)


def test_sequence_logps_chunked_equal_plain_under_no_grad_and_with_lora():
    tok = tiny_tokenizer("chatml")
    model = lora_model(tok)
    batch = pack_sequences([s for ex in pref_examples(tok) for s in ex.sequences])
    with torch.no_grad():
        plain, counts = sequence_logps(model, batch)
        chunked, chunked_counts = sequence_logps(model, batch, chunk=2)
    torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-5)
    assert torch.equal(counts, chunked_counts)


def test_in_bf16_the_chunked_loss_and_gradients_stay_within_bf16_rounding_of_the_plain_ones():
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok).to(torch.bfloat16)
    batch = group_batch()
    results = {}
    for chunk in (0, 4):
        loss, _ = SFTObjective(chunk).loss(model, batch)
        loss.backward()
        results[chunk] = (loss.detach(), [p.grad.float() for p in model.parameters()])
        model.zero_grad(set_to_none=True)
    assert float(results[4][0]) == pytest.approx(float(results[0][0]), rel=1e-4)
    for a, b in zip(results[4][1], results[0][1]):
        assert float((a - b).norm()) <= 0.02 * float(b.norm()) + 1e-6


class Captured(Exception):
    pass


def capture_train(monkeypatch, module):
    """Replace `train` in `module` by one that records the objective (and a batch source) and stops the run."""
    seen = {}

    def fake_train(model, objective, *args, source=None, **kwargs):
        seen.update(objective=objective, source=source)
        raise Captured

    monkeypatch.setattr(module, "train", fake_train)
    return seen


def test_every_run_passes_train_loss_chunk_size_to_its_objective(tmp_path, model_dir, monkeypatch):
    from alignkit.data.readers import DataSpec
    from alignkit.models.config import ModelConfig
    from alignkit.rl import run as rl_run
    from alignkit.training import pref_run, sft
    from alignkit.training.config import TrainConfig
    from tests.helpers.files import write_jsonl
    from tests.helpers.rl_runs import learning_cfg, write_prompts

    tok = tiny_tokenizer("chatml")

    def train_cfg(name):
        return TrainConfig(output_dir=str(tmp_path / name), max_steps=1, batch_size=2, precision="fp32",
                           progress=False, loss_chunk_size=7)

    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}
    seen = capture_train(monkeypatch, sft)
    with pytest.raises(Captured):
        sft.run_sft(sft.SFTConfig(model=ModelConfig(name="tiny"), train=train_cfg("sft"), data=sft.SFTDataConfig(
            train=[DataSpec(write_jsonl(tmp_path / "chat.jsonl", [chat] * 4))])), model=tiny_model(tok), tokenizer=tok)
    assert seen["objective"].loss_chunk_size == 7

    pair = {"prompt": "Say hi", "chosen": "hi", "rejected": "go away"}
    for loss in ("dpo", "rrhf"):
        seen = capture_train(monkeypatch, pref_run)
        data = [DataSpec(write_jsonl(tmp_path / "pairs.jsonl", [pair] * 4))]
        if loss == "rrhf":
            ranking = {"prompt": "Say hi", "responses": ["hi", "hello", "go away"], "ranked": True}
            data = [DataSpec(write_jsonl(tmp_path / "rank.jsonl", [ranking] * 4))]
        cfg = pref_run.PrefConfig(loss=loss, reference="live", model=ModelConfig(name="tiny"), train=train_cfg(loss),
                                  data=pref_run.PrefDataConfig(train=data))
        with pytest.raises(Captured):
            pref_run.run_pref(cfg, model=tiny_model(tok), tokenizer=tok)
        assert seen["objective"].loss_chunk_size == 7
        if loss == "dpo":
            assert seen["objective"].live.chunk == 7
    # loss=control trains SFT on control-text conversations, through the same make_objective
    assert make_objective(PrefLossConfig(loss="control"), loss_chunk_size=7).loss_chunk_size == 7

    seen = capture_train(monkeypatch, rl_run)
    cfg = learning_cfg(model_dir, write_prompts(tmp_path / "prompts.jsonl"), tmp_path / "rl", 1,
                       **{"train.loss_chunk_size": 7})
    assert cfg.train.loss_chunk_size == 7
    with pytest.raises(Captured):
        rl_run.run_rl(cfg)
    assert seen["objective"].loss_chunk_size == 7 and seen["source"].loss_chunk_size == 7
