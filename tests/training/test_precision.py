"""precision=auto: bf16 where bf16 products are fast (CUDA with bf16, CPUs with AMX), fp32 elsewhere; the loop
keeps fp32 master weights exactly when the resolved precision is bf16."""
import pytest
import torch

from alignkit.models.tiny import tiny_model, tiny_tokenizer
from alignkit.training.config import TrainConfig
from alignkit.training.loop import train
from alignkit.training.precision import resolve_precision
from alignkit.training.sft import SFTObjective


@pytest.mark.parametrize("amx", [True, False])
def test_auto_follows_the_cpu(monkeypatch, amx):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert resolve_precision("auto") == ("bf16" if amx else "fp32")
    assert resolve_precision("bf16") == "bf16" and resolve_precision("fp32") == "fp32"  # asked for: as asked
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16")


def test_auto_on_a_gpu_depends_on_its_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto", "cuda") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto", "cuda") == "bf16"


@pytest.mark.parametrize("amx", [True, False])
def test_the_loop_computes_in_the_resolved_precision(tmp_path, monkeypatch, amx):
    from alignkit.data.formats import Conversation
    from alignkit.data.sft import build_sft_examples

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok)
    convs = [Conversation([{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}])
             for i in range(4)]
    examples, _ = build_sft_examples(convs, tok, max_length=64)
    seen = []
    model.register_forward_hook(lambda module, args, out: seen.append(out.logits.dtype))
    train(model, SFTObjective(), examples, TrainConfig(output_dir=str(tmp_path), max_steps=1, batch_size=2,
                                                       precision="auto", progress=False, resume="none"))
    assert seen == [torch.bfloat16 if amx else torch.float32]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 again after training
