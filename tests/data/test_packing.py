import torch

from alignkit.data.chat import IGNORE, tokenize_conversation
from alignkit.data.packing import pack, pad, target_positions
from alignkit.training.forward import packed_logits
from alignkit.training.losses import token_nll_sum


def _examples(tok):
    convs = [
        [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello world, numbers 1 2 3"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "list"},
         {"role": "assistant", "content": "one two"}, {"role": "user", "content": "more"},
         {"role": "assistant", "content": "three"}],
    ]
    out = []
    for c in convs:
        t = tokenize_conversation(tok, c)
        out.append((t.input_ids, t.labels))
    return out


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_packed_loss_and_gradients_equal_unpacked(tiny_tok, tiny_lm):
    torch.manual_seed(0)
    examples = _examples(tiny_tok)

    padded = pad(examples, tiny_tok.pad_token_id)
    out = tiny_lm(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"])
    loss_padded = token_nll_sum(out.logits, padded["targets"]) / padded["num_targets"]
    loss_padded.backward()
    g_padded = _grads(tiny_lm)
    tiny_lm.zero_grad()

    packed = pack(examples)
    keep = target_positions(packed["targets"])
    loss_packed = token_nll_sum(packed_logits(tiny_lm, packed, keep), packed["targets"][0, keep]) / packed["num_targets"]
    loss_packed.backward()
    g_packed = _grads(tiny_lm)

    assert packed["num_targets"] == padded["num_targets"]
    assert packed["num_tokens"] == padded["num_tokens"] == sum(len(x) for x, _ in examples)
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-5, atol=1e-6)
    assert g_packed.keys() == g_padded.keys()
    for name in g_packed:
        torch.testing.assert_close(g_packed[name], g_padded[name], rtol=1e-4, atol=1e-6, msg=name)


def test_packing_blocks_attention_across_sequences(tiny_tok, tiny_lm):
    """Changing the first sequence must not change any logit of the second."""
    a, b = _examples(tiny_tok)[:2]
    a2 = ([x if i < 2 else (x + 7) % 300 for i, x in enumerate(a[0])], a[1])
    with torch.no_grad():
        outs = []
        for first in (a, a2):
            batch = pack([first, b])
            outs.append(packed_logits(tiny_lm, batch))
    n = len(a[0])
    torch.testing.assert_close(outs[0][n:], outs[1][n:])
    assert not torch.allclose(outs[0][:n], outs[1][:n])


def test_targets_are_shifted_within_each_sequence(tiny_tok):
    examples = _examples(tiny_tok)
    batch = pack(examples)
    ends = torch.tensor([len(x) for x, _ in examples]).cumsum(0) - 1
    assert (batch["targets"][0, ends] == IGNORE).all(), "no target crosses into the next sequence"
    ids, labels = examples[0]
    for t in range(len(ids) - 1):
        assert batch["targets"][0, t] == labels[t + 1]


def test_packed_forward_in_train_mode_still_isolates_sequences(tiny_tok, tiny_lm):
    """transformers only honours packing without a KV cache; packed_logits must see to that."""
    a, b = _examples(tiny_tok)[:2]
    tiny_lm.train()
    alone = packed_logits(tiny_lm, pack([b]))
    together = packed_logits(tiny_lm, pack([a, b]))[len(a[0]):]
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
