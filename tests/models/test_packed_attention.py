"""Packed rows attend within each sequence: the same logits and gradients as each sequence run on its own
and as transformers' dense block-diagonal mask, with no mask built and causal SDPA per sequence."""
import pytest
import torch

from alignkit.data.chat import IGNORE
from alignkit.data.packing import pack
from alignkit.models.packed_attention import ATTENTION, packed_attention, sequence_offsets
from alignkit.models.tiny import tiny_model, tiny_tokenizer


def sequences(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 200, (n,), generator=g).tolist() for n in lengths]


def run(model, batch, within: bool):
    if not within:  # transformers' own handling of the packed row (dense block-diagonal mask)
        return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    with packed_attention(model, batch["position_ids"]) as kwargs:
        return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False,
                     **kwargs).logits


@pytest.mark.parametrize("lengths", [[9, 4, 12, 7], [5], [1, 6, 1]])
def test_each_sequence_gets_what_it_gets_alone_and_from_the_dense_mask(lengths):
    model = tiny_model(tiny_tokenizer("chatml"))
    seqs = sequences(lengths)
    batch = pack([(s, [IGNORE] + s[1:]) for s in seqs])
    weights = torch.linspace(-1, 1, model.config.vocab_size)
    results = {}
    for within in (True, False):
        model.zero_grad()
        logits = run(model, batch, within)
        (logits * weights).sum().backward()
        results[within] = (logits.detach(), [p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(results[True][1], results[False][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        alone = torch.cat([model(input_ids=torch.tensor([s]), use_cache=False).logits[0] for s in seqs])
    torch.testing.assert_close(results[True][0][0], alone, rtol=1e-5, atol=1e-5)


def test_no_mask_is_built_and_each_sequence_runs_causal_sdpa(monkeypatch):
    model = tiny_model(tiny_tokenizer("chatml"))
    batch = pack([(s, s) for s in sequences([6, 3, 8])])
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        calls.append((q.shape[2], attn_mask is None, kw.get("is_causal")))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        run(model, batch, within=True)
    assert calls == [(n, True, True) for _ in range(model.config.num_hidden_layers) for n in (6, 3, 8)]
    assert model.config._attn_implementation == "sdpa"  # switched back after the forward


def test_the_model_switches_back_after_an_error_and_other_attentions_are_left_alone():
    model = tiny_model(tiny_tokenizer("chatml"))
    batch = pack([(s, s) for s in sequences([4, 4])])
    with pytest.raises(RuntimeError):
        with packed_attention(model, batch["position_ids"]):
            assert model.config._attn_implementation == ATTENTION
            raise RuntimeError("inside")
    assert model.config._attn_implementation == "sdpa"
    model.config._attn_implementation = "eager"
    with packed_attention(model, batch["position_ids"]) as kwargs:
        assert kwargs == {} and model.config._attn_implementation == "eager"


def test_sequence_offsets():
    assert sequence_offsets(torch.tensor([[0, 1, 2, 0, 0, 1]])).tolist() == [0, 3, 4, 6]
    with pytest.raises(ValueError, match="position id 0"):
        sequence_offsets(torch.tensor([[1, 2, 0]]))
