import json

import pytest
import torch

from alignkit.models.tiny import tiny_model, tiny_tokenizer
from alignkit.training.loop import train
from alignkit.training.sft import SFTObjective
from tests.helpers.crash import Crash, crash_at
from tests.helpers.training import cfg, make_examples


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    tok = tiny_tokenizer()
    data = make_examples(tok)
    big_model, small_model = tiny_model(tok), tiny_model(tok)
    big = train(big_model, SFTObjective(), data, cfg(tmp_path / "a", batch_size=4, grad_accum=1, max_steps=2))
    small = train(small_model, SFTObjective(), data, cfg(tmp_path / "b", batch_size=2, grad_accum=2, max_steps=2))
    for a, b in zip(big.history, small.history):
        assert a["units"] == b["units"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    for (n, p), (_, q) in zip(big_model.named_parameters(), small_model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=n)


def test_loss_is_normalised_by_tokens_of_the_whole_step(tmp_path):
    """A micro-batch with many targets must weigh more than one with few (not a mean of means)."""
    tok = tiny_tokenizer()
    data = make_examples(tok, 4)
    result = train(tiny_model(tok), SFTObjective(), data,
                   cfg(tmp_path, batch_size=1, grad_accum=4, max_steps=1, lr=0.0, warmup_steps=0))
    obj = SFTObjective()
    model = tiny_model(tok)
    sums, units = 0.0, 0
    with torch.no_grad():
        for ex in data:
            b = obj.collate([ex])
            loss, _ = obj.loss(model, b)
            sums += float(loss)
            units += b["num_units"]
    assert result.history[0]["loss"] == pytest.approx(sums / units, rel=1e-5)


def test_interrupted_and_resumed_run_logs_the_same_losses(tmp_path):
    tok = tiny_tokenizer()
    data = make_examples(tok, 10)
    full = train(tiny_model(tok), SFTObjective(), data, cfg(tmp_path / "full", max_steps=8, save_every=3))

    def crash_at_5(step, record):
        if step == 5:
            raise Crash()

    run_dir = tmp_path / "resumed"
    with pytest.raises(Crash):
        train(tiny_model(tok), SFTObjective(), data, cfg(run_dir, max_steps=8, save_every=3), on_step=crash_at_5)
    # a restarted process builds the model afresh; the checkpoint at step 3 brings it back
    resumed = train(tiny_model(tok), SFTObjective(), data, cfg(run_dir, max_steps=8, save_every=3))
    assert [r["step"] for r in resumed.history] == [4, 5, 6, 7, 8]
    expected = {r["step"]: r for r in full.history}
    for r in resumed.history:
        assert r["loss"] == pytest.approx(expected[r["step"]]["loss"], rel=1e-6), r["step"]
        assert r["lr"] == pytest.approx(expected[r["step"]]["lr"])
    logged = [json.loads(l) for l in open(run_dir / "metrics.jsonl")]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3, 4, 5, 6, 7, 8]  # the replayed 4, 5 once


def test_a_checkpoint_from_before_batch_sources_resumes_exactly(tmp_path):
    """Older checkpoints kept the data position as micro_index in state.json and had no loop_state.pt."""
    tok = tiny_tokenizer()
    data = make_examples(tok, 10)
    full = train(tiny_model(tok), SFTObjective(), data, cfg(tmp_path / "full", max_steps=6, grad_accum=2, save_every=3))
    run_dir = tmp_path / "old"
    with pytest.raises(Crash):
        train(tiny_model(tok), SFTObjective(), data, cfg(run_dir, max_steps=6, grad_accum=2, save_every=3),
              on_step=crash_at(5))
    folder = run_dir / "checkpoints" / "step-0000003"
    assert torch.load(folder / "loop_state.pt", weights_only=False) == {"source": {"micro_index": 6}, "objective": None}
    (folder / "loop_state.pt").unlink()
    state = json.loads((folder / "state.json").read_text())
    (folder / "state.json").write_text(json.dumps({**state, "micro_index": 6}))
    resumed = train(tiny_model(tok), SFTObjective(), data, cfg(run_dir, max_steps=6, grad_accum=2, save_every=3))
    assert [r["step"] for r in resumed.history] == [4, 5, 6]
    for r in resumed.history:
        assert r["loss"] == pytest.approx(full.history[r["step"] - 1]["loss"], rel=1e-6), r["step"]


def test_a_damaged_loop_state_falls_back_to_the_checkpoint_before(tmp_path, capsys):
    tok = tiny_tokenizer()
    data = make_examples(tok, 10)
    full = train(tiny_model(tok), SFTObjective(), data, cfg(tmp_path / "full", max_steps=6, save_every=2))
    run_dir = tmp_path / "r"
    with pytest.raises(Crash):
        train(tiny_model(tok), SFTObjective(), data, cfg(run_dir, max_steps=6, save_every=2), on_step=crash_at(5))
    (run_dir / "checkpoints" / "step-0000004" / "loop_state.pt").write_bytes(b"not a checkpoint file")
    resumed = train(tiny_model(tok), SFTObjective(), data, cfg(run_dir, max_steps=6, save_every=2))
    assert "step-0000004" in capsys.readouterr().err
    assert [r["step"] for r in resumed.history] == [3, 4, 5, 6]
    for r in resumed.history:
        assert r["loss"] == pytest.approx(full.history[r["step"] - 1]["loss"], rel=1e-6), r["step"]


def test_checkpoints_are_pruned_and_complete(tmp_path):
    tok = tiny_tokenizer()
    train(tiny_model(tok), SFTObjective(), make_examples(tok, 6), cfg(tmp_path, max_steps=7, save_every=2, save_total_limit=2))
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-0000004", "step-0000006"]
    for name in names:
        files = {p.name for p in (tmp_path / "checkpoints" / name).iterdir()}
        assert {"trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "loop_state.pt",
                "state.json"} <= files


def test_training_reduces_loss_and_evaluates(tmp_path):
    tok = tiny_tokenizer()
    data = make_examples(tok, 8)
    result = train(tiny_model(tok), SFTObjective(), data, cfg(tmp_path, max_steps=30, lr=3e-3, eval_every=10),
                   eval_examples=data[:4])
    assert result.history[-1]["loss"] < 0.7 * result.history[0]["loss"]
    assert [e["step"] for e in result.eval_history] == [10, 20, 30]
    assert result.eval_history[-1]["eval_loss"] < result.eval_history[0]["eval_loss"]


def test_bf16_with_master_weights_tracks_fp32(tmp_path):
    tok = tiny_tokenizer()
    data = make_examples(tok, 6)
    fp32_model, bf16_model = tiny_model(tok), tiny_model(tok)
    a = train(fp32_model, SFTObjective(), data, cfg(tmp_path / "a", precision="fp32", max_steps=3))
    b = train(bf16_model, SFTObjective(), data, cfg(tmp_path / "b", precision="bf16", max_steps=3))
    for x, y in zip(a.history, b.history):
        assert x["loss"] == pytest.approx(y["loss"], rel=3e-2)
    # the model comes back in fp32 holding the master weights, which moved away from the start
    start = tiny_model(tok)
    for (n, p), (_, q), (_, r) in zip(bf16_model.named_parameters(), fp32_model.named_parameters(),
                                      start.named_parameters()):
        assert p.dtype == torch.float32
        assert not torch.equal(p, r), n
        # bf16 noise flips a few Adam update signs; the bulk of the update must agree with fp32's
        assert (p - q).norm() < 0.5 * (q - r).norm(), n


def test_bf16_updates_smaller_than_bf16_resolution_are_kept(tmp_path):
    """With lr so small that every update is below bf16 rounding, a bf16-only model would not move;
    fp32 masters accumulate the updates."""
    tok = tiny_tokenizer()
    model, start = tiny_model(tok), tiny_model(tok)
    train(model, SFTObjective(), make_examples(tok, 4), cfg(tmp_path, precision="bf16", lr=1e-6, max_steps=3,
                                                            warmup_steps=0))
    moved = [n for (n, p), (_, q) in zip(model.named_parameters(), start.named_parameters())
             if not torch.equal(p, q) and torch.equal(p.bfloat16(), q.bfloat16())]
    assert moved, "some weights changed by less than bf16 resolution"


def test_bf16_resume_matches_uninterrupted(tmp_path):
    tok = tiny_tokenizer()
    data = make_examples(tok, 8)
    full = train(tiny_model(tok), SFTObjective(), data, cfg(tmp_path / "full", precision="bf16", max_steps=4, save_every=2))

    def crash(step, record):
        if step == 3:
            raise Crash()

    with pytest.raises(Crash):
        train(tiny_model(tok), SFTObjective(), data, cfg(tmp_path / "r", precision="bf16", max_steps=4, save_every=2),
              on_step=crash)
    resumed = train(tiny_model(tok), SFTObjective(), data, cfg(tmp_path / "r", precision="bf16", max_steps=4, save_every=2))
    for r in resumed.history:
        assert r["loss"] == pytest.approx(full.history[r["step"] - 1]["loss"], rel=1e-6)
