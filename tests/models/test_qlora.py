"""QLoRA: model.quantization=4bit (a bitsandbytes 4-bit base under LoRA adapters).

The settings and the platform check run without bitsandbytes; loading and training need it and run on
this CPU through bitsandbytes' CPU backend."""
import importlib.metadata
import importlib.util
import json

import pytest
import torch
import yaml
from safetensors import safe_open

from alignkit.models import quantization
from alignkit.cli import main
from alignkit.config import ConfigError, load_config
from alignkit.data.readers import DataSpec
from alignkit.models.config import ModelConfig
from alignkit.models.loading import load_model
from alignkit.models.lora import LoraConfig, apply_lora, merge_lora
from alignkit.models.quantization import FourBit
from alignkit.models.tiny import tiny_tokenizer
from alignkit.training.loop import train
from alignkit.training.pref_run import PrefConfig, PrefDataConfig, run_pref
from alignkit.training.sft import SFTConfig, SFTObjective, run_sft
from tests.helpers.crash import Crash, crash_at
from tests.helpers.files import write_jsonl
from tests.helpers.rl_runs import run_args, write_prompts
from tests.helpers.training import cfg as train_cfg, make_examples

CHATS = [{"messages": [{"role": "user", "content": f"say {i}"},
                       {"role": "assistant", "content": "the quick brown fox " * (1 + i % 3)}]} for i in range(8)]
PAIRS = [{"prompt": f"Say hi {i}", "chosen": "hi there", "rejected": "go away now"} for i in range(4)]

needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                               reason="bitsandbytes is not installed")


@pytest.fixture(autouse=True)
def fresh_probe():
    """The platform probe is cached per process; tests that fake a platform must not leak it."""
    quantization._platform_problem.cache_clear()
    yield
    quantization._platform_problem.cache_clear()


def qlora_overrides(data: str, out: str, *extra: str) -> list[str]:
    return ["model.quantization=4bit", "model.lora.enabled=true", f"data.train=[{data}]",
            f"train.output_dir={out}", *extra]


# ---- settings, checked before anything loads ----

def test_4bit_without_lora_is_refused_naming_both_keys(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(SFTConfig, None, ["model.quantization=4bit", "data.train=[x.jsonl]"])
    message = str(e.value)
    assert message.startswith("model.quantization=4bit") and "model.lora.enabled=true" in message
    assert "\n" not in message


@pytest.mark.parametrize("override, key", [("model.quantization=8bit", "model.quantization"),
                                           ("model.quant_type=int4", "model.quant_type"),
                                           ("model.compute_dtype=fp16", "model.compute_dtype")])
def test_bad_quantization_values_name_their_key(override, key):
    with pytest.raises(ConfigError, match=f"^{key}: must be"):
        load_config(SFTConfig, None, [override, "model.lora.enabled=true", "data.train=[x.jsonl]"])


def test_settings_follow_the_config():
    assert ModelConfig().quantization_settings() is None
    model = ModelConfig(quantization="4bit", quant_type="fp4", double_quant=False, dtype="bf16",
                        lora=LoraConfig(enabled=True))
    assert model.quantization_settings() == FourBit(quant_type="fp4", double_quant=False, compute_dtype="bf16")
    model.compute_dtype = "fp32"
    assert model.quantization_settings().compute_dtype == "fp32"


# ---- the platform check: one line naming model.quantization and what is missing ----

def fake_missing_bitsandbytes(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "bitsandbytes" else real(name, *a, **k))


def test_missing_bitsandbytes_is_one_line_with_the_install_command(monkeypatch):
    fake_missing_bitsandbytes(monkeypatch)
    with pytest.raises(ConfigError) as e:
        load_config(SFTConfig, None, ["model.quantization=4bit", "model.lora.enabled=true", "data.train=[x.jsonl]"])
    assert str(e.value) == ("model.quantization=4bit: needs bitsandbytes, which is not installed: "
                            f"pip install bitsandbytes=={quantization.PINNED_BITSANDBYTES}")


def test_too_old_bitsandbytes_names_both_versions(monkeypatch):
    real_spec, real_version = importlib.util.find_spec, importlib.metadata.version
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: object() if name == "bitsandbytes" else real_spec(name, *a, **k))
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "0.45.5" if name == "bitsandbytes" else real_version(name))
    with pytest.raises(ConfigError, match=r"^model\.quantization=4bit: needs bitsandbytes >= 0\.46\.1 .*installed "
                                          r"0\.45\.5: pip install bitsandbytes=="):
        quantization.check_4bit_platform()


@needs_bnb
def test_a_cpu_backend_that_fails_is_reported_with_its_error(monkeypatch):
    import bitsandbytes as bnb

    def broken(*args, **kwargs):
        raise NotImplementedError("no 4-bit kernel for this device\nsecond line")

    monkeypatch.setattr(bnb.nn, "Linear4bit", broken)
    with pytest.raises(ConfigError) as e:
        quantization.check_4bit_platform("model.quantization")
    assert str(e.value) == (f"model.quantization=4bit: bitsandbytes {importlib.metadata.version('bitsandbytes')} "
                            "cannot run 4-bit layers on this CPU (NotImplementedError: no 4-bit kernel for this "
                            f"device); pip install bitsandbytes=={quantization.PINNED_BITSANDBYTES} has a CPU backend")


def test_the_cli_stops_on_the_platform_before_reading_data_or_loading_a_model(tmp_path, monkeypatch, capsys):
    from alignkit.models import loading

    def refuse(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded")

    monkeypatch.setattr(loading, "load_tokenizer", refuse)
    monkeypatch.setattr(loading, "load_model", refuse)
    fake_missing_bitsandbytes(monkeypatch)
    out = tmp_path / "run"
    config = {"model": {"name": "./no/such/model", "quantization": "4bit", "lora": {"enabled": True}},
              "data": {"train": [str(tmp_path / "missing.jsonl")]}, "train": {"output_dir": str(out)}}
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(config))
    assert main(["sft", "--config", str(tmp_path / "sft.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.quantization=4bit: needs bitsandbytes" in err, err
    assert not out.exists()


# ---- loading in 4 bits ----

def linear4bit_names(model) -> set[str]:
    import bitsandbytes as bnb

    return {name for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)}


@needs_bnb
def test_4bit_load_quantizes_every_block_linear_as_configured(model_dir):
    full, tok = load_model(model_dir)
    model, _ = load_model(model_dir, quantization=FourBit(quant_type="fp4", double_quant=True, compute_dtype="bf16"))
    block_linears = {n for n, m in full.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    assert linear4bit_names(model) == block_linears
    layer = model.get_submodule(min(block_linears))
    assert layer.weight.dtype == torch.uint8 and layer.weight.quant_state.quant_type == "fp4"
    assert layer.weight.quant_state.nested and layer.compute_dtype == torch.bfloat16
    assert model.get_memory_footprint() < 0.5 * full.get_memory_footprint()
    assert {p.device.type for p in model.parameters()} == {"cpu"}  # where alignkit trains, GPU or not
    ids = torch.tensor([tok("the quick brown fox jumps").input_ids])
    with torch.no_grad():
        a, b = model(ids).logits, full(ids).logits
    # 4-bit weights change the logits a little, not wholesale: close to the full model's, never equal.
    assert 0 < (a - b).abs().max() < 0.2 * b.abs().max()


@needs_bnb
def test_4bit_from_a_peft_adapter_folder_merges_it_before_quantizing(model_dir, tmp_path):
    full, tok = load_model(model_dir)
    adapted = apply_lora(full, LoraConfig(enabled=True, r=4, alpha=8))
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    adapted.save_pretrained(tmp_path / "adapter")
    tok.save_pretrained(tmp_path / "adapter")
    settings = FourBit()
    from_adapter, _ = load_model(str(tmp_path / "adapter"), quantization=settings)
    merged = tmp_path / "merged"
    adapted.merge_and_unload().save_pretrained(merged)
    tok.save_pretrained(merged)
    from_merged, _ = load_model(str(merged), quantization=settings)
    ids = torch.tensor([tok("the quick brown fox").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(from_adapter(ids).logits, from_merged(ids).logits, rtol=0, atol=0)
    assert from_adapter.name_or_path == str(tmp_path / "adapter")  # not the temporary folder it came through


# ---- training ----

def qlora_model(model_dir, **settings):
    model, tok = load_model(model_dir, quantization=FourBit(**settings))
    torch.manual_seed(0)  # the adapters' random initialisation, the same in every run
    return apply_lora(model, LoraConfig(enabled=True, r=4, alpha=8)), tok


def lora_grads(model, ids) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@needs_bnb
def test_an_eval_pass_does_not_change_later_training_gradients(model_dir):
    """On AVX512-BF16 CPUs bitsandbytes repacks 4-bit weights at an eval-mode no-grad forward into a layout
    whose kernel has no backward; keep_training_layout stops that. Elsewhere this holds trivially."""
    model, tok = qlora_model(model_dir)
    ids = torch.tensor([tok("the quick brown fox jumps over the lazy dog").input_ids])
    before = lora_grads(model, ids)
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    after = lora_grads(model, ids)
    assert set(after) == set(before) and len(before) == 2 * len(linear4bit_names(model))
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0, msg=name)


@needs_bnb
def test_qlora_sft_trains_the_adapter_and_saves_a_full_precision_final_model(model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data = write_jsonl(tmp_path / "d.jsonl", CHATS)
    out = tmp_path / "run"
    cfg = load_config(SFTConfig, None, qlora_overrides(data, str(out), "model.lora.r=4", "train.max_steps=8",
                                                       "train.lr=1e-2", "train.batch_size=4", "train.precision=fp32",
                                                       "train.warmup_steps=0", "train.progress=false"))
    model, tok = load_model(model_dir, dtype=cfg.model.dtype, quantization=cfg.model.quantization_settings())
    result = run_sft(cfg, model=model, tokenizer=tok)
    losses = [r["loss"] for r in result.history]  # 4 passes over the data, 2 steps each
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.3, losses

    final = out / "final"
    config = json.loads((final / "config.json").read_text())
    assert "quantization_config" not in config
    with safe_open(str(final / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
        assert not any("lora" in k or "absmax" in k or "quant" in k for k in f.keys())
    assert dtypes == {torch.float32}
    saved = AutoModelForCausalLM.from_pretrained(final)
    assert not any(type(m).__name__ == "Linear4bit" for m in saved.modules())

    # What training computed: the 4-bit base with the saved adapter. final/ must compute the same.
    base, _ = load_model(model_dir, quantization=cfg.model.quantization_settings())
    trained = PeftModel.from_pretrained(base, final / "adapter")
    ids = torch.tensor([tok("say 3 the quick brown fox").input_ids])
    with torch.no_grad():
        want, got = trained(ids).logits, saved(ids).logits
        untrained = load_model(model_dir)[0](ids).logits
    assert (want - untrained).abs().max() > 0.1  # the adapter moved the model
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    adapter_config = json.loads((final / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == model_dir


@needs_bnb
def test_merging_leaves_the_trained_4bit_model_usable(model_dir):
    model, tok = qlora_model(model_dir)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    ids = torch.tensor([tok("the lazy dog").input_ids])
    model.eval()
    with torch.no_grad():
        before = model(ids).logits
        merged = merge_lora(model)
        torch.testing.assert_close(merged(ids).logits, before, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=0)
    assert linear4bit_names(model) and not linear4bit_names(merged)


@needs_bnb
def test_an_interrupted_qlora_run_resumes_with_the_same_losses(model_dir, tmp_path):
    tok = tiny_tokenizer()
    examples = make_examples(tok, 10)
    full = train(qlora_model(model_dir)[0], SFTObjective(), examples, train_cfg(tmp_path / "full", max_steps=6,
                                                                                save_every=2))
    run_dir = tmp_path / "resumed"
    run_cfg = train_cfg(run_dir, max_steps=6, save_every=2)
    with pytest.raises(Crash):
        train(qlora_model(model_dir)[0], SFTObjective(), examples, run_cfg, on_step=crash_at(3))
    with safe_open(str(run_dir / "checkpoints" / "step-0000002" / "trainable.safetensors"), "pt") as f:
        saved = set(f.keys())
    assert saved and all("lora_" in k for k in saved)  # the adapters, not the frozen 4-bit base
    resumed = train(qlora_model(model_dir)[0], SFTObjective(), examples, run_cfg)
    assert [r["step"] for r in resumed.history] == [3, 4, 5, 6]
    expected = {r["step"]: r["loss"] for r in full.history}
    for r in resumed.history:
        assert r["loss"] == pytest.approx(expected[r["step"]], rel=1e-6), r["step"]


@needs_bnb
def test_qlora_dpo_reference_is_the_4bit_base_computed_as_in_training(model_dir, tmp_path):
    """The precomputed reference (adapter off, eval mode, no grad) and the policy's first forward run
    the same 4-bit layers the same way: at step 1 the implicit rewards are zero."""
    cfg = PrefConfig(loss="dpo", reference_cache=str(tmp_path / "refcache"),
                     model=ModelConfig(name=model_dir, quantization="4bit", lora=LoraConfig(enabled=True, r=4, alpha=8)),
                     data=PrefDataConfig(train=[DataSpec(write_jsonl(tmp_path / "p.jsonl", PAIRS))]),
                     train=train_cfg(tmp_path / "run", max_steps=2, lr=1e-2))
    model, tok = load_model(model_dir, quantization=cfg.model.quantization_settings())
    result = run_pref(cfg, model=model, tokenizer=tok)
    first = result.history[0]
    assert abs(first["chosen_reward"]) < 1e-5 and abs(first["rejected_reward"]) < 1e-5, first
    assert result.history[1]["reward_margin"] != 0
    # Every adapter learned: lora_B starts at zero and moves only when gradients reach it.
    with safe_open(str(tmp_path / "run" / "final" / "adapter" / "adapter_model.safetensors"), "pt") as f:
        still_zero = [k for k in f.keys() if "lora_B" in k and not f.get_tensor(k).any()]
    assert not still_zero
    assert not json.loads((tmp_path / "run" / "final" / "config.json").read_text()).get("quantization_config")


@needs_bnb
@pytest.mark.integration
def test_the_embedded_gguf_loads_in_4bit_through_a_full_precision_copy():
    """transformers refuses a quantization config with a GGUF file: the GGUF goes through a temporary
    full-precision folder, and comes out as the converted embedded folder quantized directly does."""
    from alignkit.models.loading import embedded_gguf_path

    gguf = str(embedded_gguf_path())
    from_gguf, tok = load_model(gguf, quantization=FourBit())
    from_folder, _ = load_model("embedded", quantization=FourBit())
    assert linear4bit_names(from_gguf) == linear4bit_names(from_folder) != set()
    assert from_gguf.name_or_path == gguf  # adapters trained on it name the GGUF as their base
    ids = torch.tensor([tok("The capital of France is").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(from_gguf(ids).logits, from_folder(ids).logits, rtol=0, atol=0)


@needs_bnb
def test_every_training_command_loads_its_base_with_the_configured_quantization(model_dir, tmp_path, monkeypatch):
    """sft, pref, rl and online DPO load the model themselves: each must pass model.quantization on."""
    import alignkit.models.loading as loading

    seen = []

    def spy(spec, **kwargs):
        seen.append(kwargs.get("quantization"))
        raise Crash("stop after the load call")

    monkeypatch.setattr(loading, "load_model", spy)
    data = write_jsonl(tmp_path / "d.jsonl", CHATS)
    pairs = write_jsonl(tmp_path / "p.jsonl", PAIRS)
    for command, path in [("sft", data), ("pref", pairs)]:
        with pytest.raises(Crash):
            main([command, f"model.name={model_dir}", *qlora_overrides(path, str(tmp_path / command))])
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    with pytest.raises(Crash):
        main(["grpo", *run_args(model_dir, prompts, tmp_path / "grpo"), "model.quantization=4bit",
              "model.lora.enabled=true"])
    assert len(seen) == 3 and all(isinstance(s, FourBit) for s in seen), seen
