import math
import os

import pytest
import torch

from alignkit.data.chat import IGNORE
from alignkit.data.pref_examples import build_examples, feedback_items
from alignkit.data.preference import Feedback
from alignkit.data.readers import DataSpec
from alignkit.models.tiny import tiny_model, tiny_tokenizer
from alignkit.training import preference_losses as pl
from alignkit.training.config import TrainConfig
from alignkit.training.kto import KTOObjective
from alignkit.training.loop import train
from alignkit.training.pref_run import PrefConfig, PrefDataConfig, load_pref_data
from alignkit.training.preference import (PAIR_LOSSES, PairwiseObjective, PrefLossConfig, RankingObjective,
                                          collate_examples)
from alignkit.training.reference import LiveReference, attach_reference, sequence_logps
from tests.helpers.paths import DEMO_DATA


def user(text):
    return [{"role": "user", "content": text}]


def reply(text):
    return [{"role": "assistant", "content": text}]


def items(rows):
    """(prompt, [responses...]) rows as build_examples items."""
    return [(user(p), [reply(r) for r in responses], None, None, "mem", i + 1, "line")
            for i, (p, responses) in enumerate(rows)]


PAIRS = [("What is the capital of France?", ["Paris.", "It is Rome, I believe, or maybe Madrid."]),
         ("Say hello", ["hello world", "no"]),
         ("List three numbers", ["1 2 3", "one two three four five six"])]


@torch.no_grad()
def separate_logps(model, sequences):
    """Reference computation: each sequence alone, full logits, no packing."""
    out = []
    for ids, labels in sequences:
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()
        targets = torch.tensor(labels[1:] + [IGNORE])
        logp = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[:, None])[:, 0]
        out.append(float((logp * (targets != IGNORE)).sum()))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("template", ["chatml", "llama3", "inst"])
def test_packed_chosen_rejected_logps_equal_separate_forwards(template):
    tok = tiny_tokenizer(template)
    model = tiny_model(tok)
    examples, _ = build_examples(items(PAIRS), tok, max_length=256)
    batch = collate_examples(examples)
    assert batch["input_ids"].shape[0] == 1 and len(batch["seq_lens"]) == 6  # one row, no padding
    with torch.no_grad():
        packed, counts = sequence_logps(model, batch)
        alone = separate_logps(model, [s for ex in examples for s in ex.sequences])
    torch.testing.assert_close(packed.double(), alone, rtol=1e-4, atol=1e-4)
    assert counts.tolist() == [sum(x != IGNORE for x in s[1][1:]) for ex in examples for s in ex.sequences]


def test_labels_cover_the_response_only_even_after_earlier_assistant_turns(tiny_tok):
    prompt = user("hi") + reply("hello there") + user("and now?")
    examples, _ = build_examples([(prompt, [reply("the fox"), reply("the dog")], None, None, "m", 1, "line")],
                                 tiny_tok, max_length=256)
    ids, labels = examples[0].sequences[0]
    trained = tiny_tok.decode([t for t, lab in zip(ids, labels) if lab != IGNORE])
    assert "the fox" in trained and "hello there" not in trained and "and now" not in trained


def test_logits_are_computed_only_at_completion_positions(tiny_tok, tiny_lm):
    examples, _ = build_examples(items(PAIRS), tiny_tok, max_length=256)
    batch = collate_examples(examples)
    shapes = []
    hook = tiny_lm.lm_head.register_forward_hook(lambda mod, inp, out: shapes.append(tuple(out.shape)))
    with torch.no_grad():
        _, counts = sequence_logps(tiny_lm, batch)
    hook.remove()
    assert len(shapes) == 1  # one forward for every chosen and rejected
    assert shapes[0][-2] == int(counts.sum()) < batch["num_tokens"]


def pair_config(loss, **kw):
    extra = {"simpo": dict(simpo_gamma=0.3, beta=2.0), "slic": dict(slic_delta=1.0, slic_reg_weight=0.1),
             "cdpo": dict(label_smoothing=0.1), "robust": dict(label_smoothing=0.1)}.get(loss, {})
    return PrefLossConfig(loss=loss, **{**extra, **kw})


@pytest.mark.parametrize("loss", PAIR_LOSSES)
def test_pairwise_objective_equals_the_loss_function_on_separate_forwards(loss, tiny_tok, tmp_path):
    policy, start = tiny_model(tiny_tok, seed=1), tiny_model(tiny_tok, seed=2)
    examples, _ = build_examples(items(PAIRS), tiny_tok, max_length=256)
    cfg = pair_config(loss)
    if cfg.needs_reference:
        attach_reference(start, examples, model_id="start", template="t", max_length=256,
                         cache_dir=str(tmp_path), batch_size=2)
    objective = PairwiseObjective(cfg)
    batch = objective.collate(examples)
    with torch.no_grad():
        total, metrics = objective.loss(policy, batch)
        seqs = [s for ex in examples for s in ex.sequences]
        lp = separate_logps(policy, seqs).float()
        lengths = torch.tensor([float(sum(x != IGNORE for x in s[1][1:])) for s in seqs])
    pc, pr, lc, lr = lp[0::2], lp[1::2], lengths[0::2], lengths[1::2]
    if cfg.needs_reference:
        ref = separate_logps(start, seqs).float()
        rc, rr = ref[0::2], ref[1::2]
    expected = {
        "dpo": lambda: pl.dpo_loss(pc, pr, rc, rr, beta=0.1),
        "cdpo": lambda: pl.dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=0.1),
        "robust": lambda: pl.robust_dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=0.1),
        "ipo": lambda: pl.ipo_loss(pc, pr, rc, rr, beta=0.1, chosen_lengths=lc, rejected_lengths=lr),
        "slic": lambda: pl.slic_hf_loss(pc, pr, delta=1.0, regularization_weight=0.1),
        "simpo": lambda: pl.simpo_loss(pc, pr, lc, lr, beta=2.0, gamma=0.3),
        "orpo": lambda: pl.orpo_loss(pc, pr, lc, lr, odds_ratio_weight=0.1),
    }[loss]()
    assert float(total) == pytest.approx(float(expected.losses.sum()), rel=1e-4, abs=1e-4)
    for name in ("chosen_reward", "rejected_reward", "reward_margin", "accuracy"):
        assert metrics[name] == pytest.approx(float(expected.metrics[name].sum()), rel=1e-4, abs=1e-4), name
    assert batch["num_units"] == 3


def test_ranking_objective_scores_all_responses_in_one_forward(tiny_tok, tiny_lm):
    rows = [("Pick a word", ["fox", "the lazy dog", "no", "quick brown"]), ("Count", ["1 2 3", "one"])]
    examples, _ = build_examples(items(rows), tiny_tok, max_length=256)
    for loss, fn, weight in (("rrhf", pl.rrhf_loss, 1.0), ("pro", pl.pro_loss, 0.0)):
        objective = RankingObjective(PrefLossConfig(loss=loss))
        calls = []
        hook = tiny_lm.register_forward_hook(lambda *a: calls.append(1))
        with torch.no_grad():
            total, metrics = objective.loss(tiny_lm, objective.collate(examples))
        hook.remove()
        assert len(calls) == 1  # all six responses in one packed forward
        lp = separate_logps(tiny_lm, [s for ex in examples for s in ex.sequences]).float()
        lengths = [float(sum(x != IGNORE for x in s[1][1:])) for ex in examples for s in ex.sequences]
        grid = torch.tensor([lp[:4].tolist(), lp[4:].tolist() + [0.0, 0.0]])
        lens = torch.tensor([lengths[:4], lengths[4:] + [1.0, 1.0]])
        mask = torch.tensor([[True] * 4, [True, True, False, False]])
        expected = fn(grid, lens, response_mask=mask, sft_weight=weight)
        assert float(total) == pytest.approx(float(expected.losses.sum()), rel=1e-4)
        assert metrics["accuracy"] == pytest.approx(float(expected.metrics["accuracy"].sum()))


def test_kto_pairs_each_completion_with_another_prompt_and_matches_the_formula(tiny_tok, tmp_path):
    feedback = [Feedback(user(p), reply(r), good, "m", i) for i, (p, r, good) in enumerate(
        [("q1", "fox", True), ("q1", "dog", False), ("q2", "one two", True), ("q3", "three", False)])]
    made = feedback_items(feedback)
    for (prompt, responses, *_), item in zip(made, feedback):
        partner = next(f for f in feedback if f.completion == responses[1])
        assert partner.prompt != prompt and responses[0] == item.completion
    examples, _ = build_examples(made, tiny_tok, max_length=256)
    policy, start = tiny_model(tiny_tok, seed=1), tiny_model(tiny_tok, seed=2)
    attach_reference(start, examples, model_id="start", template="t", max_length=256, cache_dir=str(tmp_path))
    objective = KTOObjective(PrefLossConfig(loss="kto", beta=0.3))
    with torch.no_grad():
        total, metrics = objective.loss(policy, objective.collate(examples))
        seqs = [ex.sequences for ex in examples]
        lp = separate_logps(policy, [s[0] for s in seqs]).float()
        kl = separate_logps(policy, [s[1] for s in seqs]).float()
        ref = separate_logps(start, [s[0] for s in seqs]).float()
        kl_ref = separate_logps(start, [s[1] for s in seqs]).float()
    desirable = torch.tensor([True, False, True, False])
    expected = pl.kto_loss(lp, ref, desirable, kl, kl_ref, beta=0.3)
    assert float(total) == pytest.approx(float(expected.losses.sum()), rel=1e-4)
    assert metrics["desirable"] == 2 and metrics["undesirable"] == 2


def test_kto_with_a_single_prompt_is_an_error():
    feedback = [Feedback(user("q"), reply("a"), True, "f.jsonl", 1),
                Feedback(user("q"), reply("b"), False, "f.jsonl", 2)]
    with pytest.raises(ValueError, match="two different prompts"):
        feedback_items(feedback)


def test_live_reference_gives_the_same_loss_as_precomputed(tiny_tok, tmp_path):
    model = tiny_model(tiny_tok, seed=3)
    examples, _ = build_examples(items(PAIRS), tiny_tok, max_length=256)
    live = PairwiseObjective(PrefLossConfig(loss="dpo", reference="live"), LiveReference(model))
    with torch.no_grad():
        model.lm_head.weight.add_(0.05 * torch.randn_like(model.lm_head.weight))  # the policy moves on
        live_loss, _ = live.loss(model, live.collate(examples))
    fresh = tiny_model(tiny_tok, seed=3)
    attach_reference(fresh, examples, model_id="m", template="t", max_length=256, cache_dir=str(tmp_path))
    pre = PairwiseObjective(PrefLossConfig(loss="dpo"))
    with torch.no_grad():
        pre_loss, _ = pre.loss(model, pre.collate(examples))
    assert float(live_loss) == pytest.approx(float(pre_loss), rel=1e-5)
    assert float(pre_loss) != pytest.approx(0.6931 * 3, abs=1e-3)  # the policy did move from its reference


def test_missing_reference_is_a_clear_error(tiny_tok, tiny_lm):
    examples, _ = build_examples(items(PAIRS), tiny_tok, max_length=256)
    objective = PairwiseObjective(PrefLossConfig(loss="dpo"))
    with pytest.raises(ValueError, match="attach_reference"):
        objective.loss(tiny_lm, objective.collate(examples))


@pytest.mark.parametrize("settings, key", [
    (dict(loss="simpo"), "simpo_gamma"), (dict(loss="slic", slic_delta=1.0), "slic_reg_weight"),
    (dict(loss="cdpo"), "label_smoothing"), (dict(loss="dpo", label_smoothing=0.1), "cdpo"),
    (dict(loss="dpx"), "loss must be one of"), (dict(reference="cached"), "reference"),
])
def test_bad_loss_settings_name_the_key(settings, key):
    with pytest.raises(ValueError, match=key):
        PrefLossConfig(**settings).check()


def test_overlong_pairs_are_truncated_or_dropped_and_counted(tiny_tok):
    rows = [("short", ["a", "b"]), ("long " * 60, ["fox " * 40, "dog"])]
    kept, report = build_examples(items(rows), tiny_tok, max_length=40, overlong="drop")
    assert len(kept) == 1 and report.dropped == 1 and "mem:2" in report.dropped_where[0]
    kept, report = build_examples(items(rows), tiny_tok, max_length=40, overlong="truncate")
    # the long prompt leaves no response token inside 40 tokens: dropped, with the reason
    assert len(kept) == 1 and report.dropped == 1 and "no response token" in report.dropped_where[0]
    rows = [("hi", ["fox " * 40, "dog"])]
    kept, report = build_examples(items(rows), tiny_tok, max_length=40, overlong="truncate")
    assert len(kept) == 1 and report.truncated == 1 and all(len(s[0]) <= 40 for s in kept[0].sequences)


def test_dpo_training_raises_preference_accuracy_on_heldout_pairs(tmp_path, tiny_tok):
    cfg = PrefConfig(loss="dpo", beta=0.1, data=PrefDataConfig(
        train=[DataSpec(os.path.join(DEMO_DATA, "pref_train.jsonl"))],
        eval=[DataSpec(os.path.join(DEMO_DATA, "pref_heldout.jsonl"))], max_length=128))
    train_examples, eval_examples, _ = load_pref_data(cfg.data, tiny_tok, seed=0)
    train_examples, eval_examples = train_examples[:64], eval_examples[::2]  # every kind of rejected response
    model = tiny_model(tiny_tok)
    attach_reference(model, train_examples + eval_examples, model_id="tiny", template="", max_length=128,
                     cache_dir=str(tmp_path / "cache"), batch_size=32)
    result = train(model, PairwiseObjective(cfg), train_examples,
                   TrainConfig(output_dir=str(tmp_path / "run"), max_steps=10, batch_size=8, lr=3e-3,
                               precision="fp32", progress=False, resume="none"),
                   eval_examples=eval_examples)
    # Before training policy == reference: every implicit reward is 0, accuracy (strict) is 0.
    assert result.history[0]["accuracy"] == 0.0
    final = result.eval_history[-1]
    assert final["eval_accuracy"] > 0.6 and final["eval_reward_margin"] > 0  # chance is 0.5
    assert final["eval_chosen_reward"] > final["eval_rejected_reward"]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "auto"])
@pytest.mark.parametrize("reference", ["precomputed", "live"])
def test_first_dpo_loss_is_log_2_because_the_reference_runs_like_the_policy(tmp_path, tiny_tok, precision, reference,
                                                                           monkeypatch):
    if precision == "auto":  # as on a CPU with AMX, where auto is bf16: the reference must follow the loop
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    examples, _ = build_examples(items(PAIRS * 2), tiny_tok, max_length=256)
    model = tiny_model(tiny_tok, seed=7)
    cfg = PrefLossConfig(loss="dpo", reference=reference)
    live = None
    if reference == "precomputed":
        attach_reference(model, examples, model_id="m", template="t", max_length=256, cache_dir=str(tmp_path),
                         batch_size=5, precision=precision)  # other packing than training's rows of 2
    else:
        live = LiveReference(model, precision)
    result = train(model, PairwiseObjective(cfg, live), examples,
                   TrainConfig(output_dir=str(tmp_path / "run"), max_steps=2, batch_size=2, lr=1e-2,
                               precision=precision, progress=False, resume="none"))
    tolerance = 1e-6 if precision == "fp32" else 1e-4
    assert result.history[0]["loss"] == pytest.approx(math.log(2), abs=tolerance)
    assert result.history[0]["reward_margin"] == pytest.approx(0.0, abs=tolerance)
    assert result.history[1]["loss"] != pytest.approx(math.log(2), abs=1e-4)  # and training moves it
