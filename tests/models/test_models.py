import pytest
import torch

from alignkit.models.loading import ModelLoadError, load_model, load_tokenizer, resolve_spec
from alignkit.models.lora import LoraConfig, apply_lora, find_target_modules, merge_lora, save_model
from alignkit.models.tiny import tiny_model, tiny_tokenizer


@pytest.fixture
def saved_tiny(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    save_model(model, tok, str(tmp_path / "tiny"))
    return tmp_path / "tiny", model, tok


def test_local_folder_round_trip(saved_tiny):
    path, model, tok = saved_tiny
    loaded, loaded_tok = load_model(str(path))
    ids = torch.tensor([tok("hello world").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    assert loaded_tok.chat_template == tok.chat_template
    assert loaded_tok.pad_token is not None


def test_bf16_load(saved_tiny):
    loaded, _ = load_model(str(saved_tiny[0]), dtype="bf16")
    assert next(loaded.parameters()).dtype == torch.bfloat16
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_model(str(saved_tiny[0]), dtype="fp8")


@pytest.mark.parametrize("spec", ["./no/such/model", "/tmp/definitely-missing-model-dir", "missing.gguf"])
def test_missing_paths_are_clear_errors(spec):
    with pytest.raises(ModelLoadError, match="not (found|exist)"):
        resolve_spec(spec)


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        resolve_spec(str(tmp_path))


def test_hub_ids_are_recognised_without_touching_the_network():
    assert resolve_spec("HuggingFaceTB/SmolLM2-135M-Instruct") == ("hub", "HuggingFaceTB/SmolLM2-135M-Instruct")


def test_lora_targets_every_block_linear_but_not_the_head(tiny_lm):
    targets = find_target_modules(tiny_lm)
    assert set(targets) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_lora_merge_save_and_adapter_reload(tmp_path, tiny_tok):
    model = apply_lora(tiny_model(tiny_tok), LoraConfig(enabled=True, r=4, alpha=8))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():  # make the adapter do something
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    ids = torch.tensor([tiny_tok("the quick brown fox").input_ids])
    with torch.no_grad():
        expected = model(ids).logits
    model.save_pretrained(str(tmp_path / "adapter"))
    tiny_tok.save_pretrained(str(tmp_path / "adapter"))
    base_dir = tmp_path / "base"
    save_model(tiny_model(tiny_tok), tiny_tok, str(base_dir))
    # point the adapter at the saved base, as peft records it
    import json
    cfg_path = tmp_path / "adapter" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(base_dir)
    cfg_path.write_text(json.dumps(cfg))
    reloaded, _ = load_model(str(tmp_path / "adapter"))
    merged = merge_lora(model)
    save_model(merged, tiny_tok, str(tmp_path / "merged"))
    from_disk, _ = load_model(str(tmp_path / "merged"))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(from_disk(ids).logits, expected, rtol=1e-4, atol=1e-5)
    assert not any("lora" in k for k in from_disk.state_dict())


def test_tokenizer_only_load(saved_tiny):
    tok = load_tokenizer(str(saved_tiny[0]))
    assert tok("hello").input_ids == saved_tiny[2]("hello").input_ids


def test_lora_adapters_with_a_seed_depend_on_it_alone_and_leave_the_global_generator():
    import copy

    base = tiny_model(tiny_tokenizer())
    adapters = []
    for draw in (1, 5):
        torch.manual_seed(123)
        torch.rand(draw)  # the global generator at a different place each time
        before = torch.get_rng_state()
        model = apply_lora(copy.deepcopy(base), LoraConfig(enabled=True, r=4), seed=7)
        assert torch.equal(torch.get_rng_state(), before)
        adapters.append({n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n})
    assert adapters[0].keys() == adapters[1].keys() and adapters[0]
    assert all(torch.equal(adapters[0][n], adapters[1][n]) for n in adapters[0])
    other = apply_lora(copy.deepcopy(base), LoraConfig(enabled=True, r=4), seed=8)
    assert any(not torch.equal(p, adapters[0][n]) for n, p in other.named_parameters() if "lora_A" in n)
