import copy

import pytest
import torch

from alignkit.data.pref_examples import build_examples
from alignkit.models.lora import LoraConfig, apply_lora
from alignkit.models.tiny import tiny_model
from alignkit.training.reference import (LiveReference, ReferenceCache, attach_reference, compute_logps,
                                        model_fingerprint, pack_sequences, sequence_logps)



def pairs(tok, rows=(("capital of France?", "Paris", "Rome"), ("say hi", "hi there", "no"))):
    items = [([{"role": "user", "content": p}], [[{"role": "assistant", "content": c}],
                                                [{"role": "assistant", "content": r}]], None, None, "m", i, "line")
             for i, (p, c, r) in enumerate(rows)]
    return build_examples(items, tok, max_length=128)[0]


def attach(model, examples, cache_dir, **kw):
    args = dict(model_id="tiny", template="chatml", max_length=128, cache_dir=str(cache_dir), batch_size=1)
    args.update(kw)
    return attach_reference(model, examples, **args)


def test_rerun_hits_the_cache_with_identical_values(tmp_path, tiny_tok):
    model = tiny_model(tiny_tok)
    first_examples = pairs(tiny_tok)
    first = attach(model, first_examples, tmp_path)
    assert not first.hit
    again_examples = pairs(tiny_tok)
    # A rerun is a new process: a freshly built model with the same weights.
    again = attach(tiny_model(tiny_tok), again_examples, tmp_path)
    assert again.hit and again.key == first.key
    assert [ex.reference for ex in again_examples] == [ex.reference for ex in first_examples]
    assert all(len(ex.reference) == 2 and all(v < 0 for v in ex.reference) for ex in again_examples)


def test_a_hit_is_not_recomputed(tmp_path, tiny_tok):
    model = tiny_model(tiny_tok)
    attach(model, pairs(tiny_tok), tmp_path)
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    attach(model, pairs(tiny_tok), tmp_path)
    hook.remove()
    assert calls == []


@pytest.mark.parametrize("change", ["data", "weights", "model_name", "template", "max_length", "precision"])
def test_changes_to_what_the_numbers_depend_on_miss(tmp_path, tiny_tok, change):
    model = tiny_model(tiny_tok)
    base = attach(model, pairs(tiny_tok), tmp_path)
    examples, kwargs = pairs(tiny_tok), {}
    if change == "data":
        examples = pairs(tiny_tok, rows=(("capital of France?", "Paris!", "Rome"), ("say hi", "hi there", "no")))
    elif change == "weights":
        model = copy.deepcopy(model)
        with torch.no_grad():
            model.model.layers[1].mlp.down_proj.weight[3, 5] += 1e-3  # one weight deep inside
    else:
        kwargs = {"model_name": dict(model_id="other"), "template": dict(template="llama3"),
                  "max_length": dict(max_length=64), "precision": dict(precision="bf16")}[change]
    changed = attach(model, examples, tmp_path, **kwargs)
    assert not changed.hit and changed.key != base.key


def test_a_corrupt_cache_file_is_recomputed(tmp_path, tiny_tok):
    model = tiny_model(tiny_tok)
    first_examples = pairs(tiny_tok)
    first = attach(model, first_examples, tmp_path)
    with open(first.path, "wb") as f:
        f.write(b"not safetensors")
    examples = pairs(tiny_tok)
    again = attach(model, examples, tmp_path)
    assert not again.hit
    flat = [v for ex in examples for v in ex.reference]
    assert flat == pytest.approx([v for ex in first_examples for v in ex.reference])


def test_cache_refuses_an_entry_with_other_counts(tmp_path):
    cache = ReferenceCache(tmp_path)
    cache.save("k", torch.tensor([-1.0, -2.0, -3.0, -4.0]), [2, 2], {})
    assert cache.load("k", [2, 2]).tolist() == [-1.0, -2.0, -3.0, -4.0]
    assert cache.load("k", [3, 1]) is None and cache.load("missing", [2, 2]) is None


def test_lora_reference_is_the_base_model_with_the_adapter_off(tmp_path, tiny_tok):
    base = tiny_model(tiny_tok)
    untouched = copy.deepcopy(base)
    peft_model = apply_lora(base, LoraConfig(enabled=True, r=4, alpha=8))
    with torch.no_grad():  # make the adapter matter, as it does after some training
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    examples = pairs(tiny_tok)
    peft_model.train()
    attach(peft_model, examples, tmp_path)
    assert peft_model.training  # switched back after computing the reference
    base_logps = compute_logps(untouched, examples, batch_size=2)
    assert [v for ex in examples for v in ex.reference] == pytest.approx(base_logps.tolist(), rel=1e-5)
    with torch.no_grad():  # the adapter, when on, does change the numbers: the test above could fail
        active, _ = sequence_logps(peft_model, pack_sequences([s for ex in examples for s in ex.sequences]))
    assert not torch.allclose(active, base_logps, atol=1e-3)
    # the same base, LoRA or not, shares one fingerprint (and so one cache entry)
    assert model_fingerprint(peft_model) == model_fingerprint(untouched)
    # live mode too: the reference is the adapter switched off, never a second copy of the weights
    live = LiveReference(peft_model)
    assert live.copy is None
    batch = pack_sequences([s for ex in examples for s in ex.sequences])
    assert live.logps(peft_model, batch).tolist() == pytest.approx(base_logps.tolist(), rel=1e-5)


def test_live_reference_without_lora_is_a_frozen_copy(tiny_tok):
    model = tiny_model(tiny_tok)
    live = LiveReference(model)
    assert live.copy is not model and not any(p.requires_grad for p in live.copy.parameters())
    with torch.no_grad():
        model.lm_head.weight.mul_(2.0)  # training moves the policy; the reference stays where it started
    examples = pairs(tiny_tok)
    batch = pack_sequences([s for ex in examples for s in ex.sequences])
    assert live.logps(model, batch).tolist() == pytest.approx(
        compute_logps(tiny_model(tiny_tok), examples, batch_size=2).tolist(), rel=1e-5)


def test_chunked_target_logprobs_equal_the_full_logits_path(tiny_tok):
    from alignkit.data.packing import target_positions
    from alignkit.training.chunked_logprobs import target_logprobs
    from alignkit.training.losses import token_logprobs
    from alignkit.training.reference import forward_logps

    model = tiny_model(tiny_tok)
    examples = pairs(tiny_tok)
    batch = pack_sequences([s for ex in examples for s in ex.sequences])
    keep = target_positions(batch["targets"])
    with torch.no_grad():
        full = token_logprobs(model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                    use_cache=False).logits[0, keep], batch["targets"][0, keep])
        chunked = target_logprobs(model, batch, keep, batch["targets"][0, keep], chunk=3)
        assert chunked.shape == full.shape and keep.numel() > 3
        torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(forward_logps(model, batch), sequence_logps(model, batch)[0], rtol=1e-5, atol=1e-5)
    # a LoRA model runs with its adapter as it stands (here on): the head split goes through the peft wrapper
    peft_model = apply_lora(copy.deepcopy(model), LoraConfig(enabled=True, r=4, alpha=8))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
        torch.testing.assert_close(forward_logps(peft_model, batch), sequence_logps(peft_model, batch)[0],
                                   rtol=1e-5, atol=1e-5)


def test_only_the_examples_a_run_visits_get_reference_log_probs(tmp_path, tiny_tok):
    from alignkit.training.batch_source import ExampleSource, examples_visited
    from alignkit.training.preference import batch_reference, collate_examples

    rows = [(f"question {i}?", f"answer {i}", f"wrong {i}") for i in range(10)]
    examples = pairs(tiny_tok, rows=rows)
    needed = examples_visited(examples, batch_size=2, grad_accum=1, seed=3, shuffle=True, steps=2)
    source = ExampleSource(examples, lambda exs: exs, batch_size=2, grad_accum=1, seed=3)
    seen = {id(ex) for _ in range(2) for exs in source.next_step(0) for ex in exs}
    assert {id(examples[i]) for i in needed} == seen and len(needed) == 4
    report = attach(tiny_model(tiny_tok), examples, tmp_path, needed=needed)
    assert report.sequences == 8  # 4 pairs, 2 sequences each
    assert [ex.reference is not None for ex in examples] == [i in needed for i in range(10)]
    missing = next(ex for ex in examples if ex.reference is None)
    with pytest.raises(ValueError, match="needs reference log-probs"):
        batch_reference(collate_examples([missing]), None, None, "cpu")
    # a run as long as the data, or longer, visits every example
    assert examples_visited(examples, batch_size=4, grad_accum=2, seed=0, shuffle=True, steps=2) == set(range(10))


def test_a_short_run_prepares_the_reference_for_its_own_steps_and_the_eval_set(tmp_path, tiny_tok, capsys):
    from alignkit.training.config import TrainConfig
    from alignkit.training.pref_run import PrefConfig, prepare_reference

    examples = pairs(tiny_tok, rows=[(f"question {i}?", f"answer {i}", f"wrong {i}") for i in range(12)])
    train_examples, eval_examples = examples[:10], examples[10:]
    cfg = PrefConfig(loss="dpo", reference_cache=str(tmp_path),
                     train=TrainConfig(max_steps=2, batch_size=2, grad_accum=1, seed=5, progress=False))
    prepare_reference(cfg, tiny_model(tiny_tok), tiny_tok, train_examples, eval_examples)
    assert sum(ex.reference is not None for ex in train_examples) == 4  # 2 steps x 2 pairs
    assert all(ex.reference is not None for ex in eval_examples)
    assert "for 12 sequences computed" in capsys.readouterr().out  # 6 pairs, not 12
