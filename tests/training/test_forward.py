"""The packed forward: the padded layout gives the packed layout's logits, values and gradients at the
same flat positions, and the cost model picks padded only for many similar sequences under a dense mask."""
import pytest
import torch

from alignkit.data.chat import IGNORE
from alignkit.data.packing import pack, target_positions
from alignkit.models.tiny import tiny_model, tiny_tokenizer
from alignkit.rl.value_head import ActorCritic
from alignkit.training.forward import cheaper_layout, packed_forward, sequence_bounds


def packed_batch(lengths, prompt=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    sequences = []
    for n in lengths:
        ids = torch.randint(5, 200, (n,), generator=g).tolist()
        sequences.append((ids, [IGNORE] * prompt + ids[prompt:]))
    return pack(sequences)


@pytest.mark.parametrize("lengths", [[9, 4, 12, 7], [5], [6, 6, 6]])
@pytest.mark.parametrize("all_positions", [False, True])
def test_padded_layout_gives_the_packed_logits_and_gradients(lengths, all_positions):
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok)
    batch = packed_batch(lengths)
    keep = None if all_positions else target_positions(batch["targets"])
    results = {}
    for layout in ("packed", "padded"):
        model.zero_grad()
        logits = packed_forward(model, batch, keep, layout=layout).logits
        expected_k = batch["input_ids"].shape[1] if all_positions else keep.numel()
        assert logits.shape == (1, expected_k, model.config.vocab_size)
        (logits.float() * torch.linspace(-1, 1, logits.shape[-1])).sum().backward()
        results[layout] = (logits.detach(), [p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(results["padded"][0], results["packed"][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(results["padded"][1], results["packed"][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("separate_critic", [False, True])
def test_padded_layout_gives_the_packed_values(separate_critic):
    tok = tiny_tokenizer("chatml")
    ac = ActorCritic(tiny_model(tok), tiny_model(tok, seed=1) if separate_critic else None)
    with torch.no_grad():
        ac.value_head.weight.normal_()
    batch = packed_batch([8, 3, 10, 6])
    keep = target_positions(batch["targets"])
    outs = {layout: packed_forward(ac, batch, keep, layout=layout, return_values=True) for layout in ("packed", "padded")}
    torch.testing.assert_close(outs["padded"].values, outs["packed"].values, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs["padded"].logits, outs["packed"].logits, rtol=1e-5, atol=1e-5)


def test_sequence_bounds_follow_the_position_ids():
    starts, lengths = sequence_bounds(packed_batch([4, 2, 5])["position_ids"][0])
    assert starts.tolist() == [0, 4, 6] and lengths.tolist() == [4, 2, 5]


def test_the_cost_model_packs_under_sdpa_and_pads_many_similar_sequences_under_a_dense_mask():
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok, hidden=576)  # the embedded model's width
    model.config.intermediate_size = 1536
    # SDPA: packed rows attend within each sequence (models/packed_attention.py), never dearer than padding
    assert cheaper_layout(model, torch.tensor([124] * 16)) == "packed"  # a GRPO rollout's samples
    assert cheaper_layout(model, torch.tensor([500] + [20] * 15)) == "packed"
    model.config._attn_implementation = "eager"  # a dense mask over the whole packed row
    assert cheaper_layout(model, torch.tensor([124] * 16)) == "padded"
    assert cheaper_layout(model, torch.tensor([500] + [20] * 15)) == "packed"  # padding would cost 15 x 480
    assert cheaper_layout(model, torch.tensor([30])) == "packed"  # one sequence: nothing to choose
    with pytest.raises(ValueError, match="layout"):
        packed_forward(model, packed_batch([3, 4]), layout="diagonal")


def group_batch(prompt_lens=(5, 9), completion_lens=((4, 7, 2), (6, 1, 3)), seed=0):
    """RL-like: each prompt with several completions of different lengths, packed sample after sample."""
    g = torch.Generator().manual_seed(seed)
    sequences = []
    for n, lens in zip(prompt_lens, completion_lens):
        prompt = torch.randint(5, 200, (n,), generator=g).tolist()
        for c in lens:
            completion = torch.randint(5, 200, (c,), generator=g).tolist()
            sequences.append((prompt + completion, [IGNORE] * n + completion))
    return pack(sequences)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_shared_prompt_layout_gives_the_packed_logits_and_gradients(precision):
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok)
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    batch = group_batch()
    keep = target_positions(batch["targets"])
    results = {}
    for layout in ("packed", "shared_prompt"):
        model.zero_grad()
        logits = packed_forward(model, batch, keep, layout=layout).logits
        assert logits.shape == (1, keep.numel(), model.config.vocab_size)
        (logits.float() * torch.linspace(-1, 1, logits.shape[-1])).sum().backward()
        results[layout] = (logits.detach().float(), [p.grad.float().clone() for p in model.parameters()])
    if precision == "fp32":
        torch.testing.assert_close(results["shared_prompt"][0], results["packed"][0], rtol=1e-5, atol=1e-5)
        for a, b in zip(results["shared_prompt"][1], results["packed"][1]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    else:  # bf16 rounds differently along the two paths: compare as a whole, relative to the size
        pairs = [(results["shared_prompt"][0], results["packed"][0])] + list(zip(results["shared_prompt"][1],
                                                                                 results["packed"][1]))
        for a, b in pairs:
            assert float((a - b).norm()) <= 0.02 * float(b.norm()) + 1e-6


def test_the_shared_prompt_layout_gives_the_values_of_a_shared_head_and_is_refused_with_a_separate_critic():
    tok = tiny_tokenizer("chatml")
    ac = ActorCritic(tiny_model(tok))
    with torch.no_grad():
        ac.value_head.weight.normal_()
    batch = group_batch()
    keep = target_positions(batch["targets"])
    outs = {layout: packed_forward(ac, batch, keep, layout=layout, return_values=True)
            for layout in ("packed", "shared_prompt")}
    torch.testing.assert_close(outs["shared_prompt"].values, outs["packed"].values, rtol=1e-5, atol=1e-5)
    critic = ActorCritic(tiny_model(tok), tiny_model(tok, seed=1))
    with pytest.raises(ValueError, match="prompt cache"):
        packed_forward(critic, batch, keep, layout="shared_prompt", return_values=True)
    auto = packed_forward(critic, batch, keep, layout="auto", return_values=True)  # another layout, same numbers
    torch.testing.assert_close(auto.values, packed_forward(critic, batch, keep, layout="packed",
                                                           return_values=True).values, rtol=1e-5, atol=1e-5)


def test_the_cost_model_shares_the_prompt_of_a_group():
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok, hidden=576)
    model.config.intermediate_size = 1536
    lengths = torch.tensor([124] * 16)
    # 4 prompts of 60 tokens, 4 samples each: the prompt runs 4 times instead of 16
    assert cheaper_layout(model, lengths, torch.tensor([60] * 16), distinct=4) == "shared_prompt"
    assert cheaper_layout(model, lengths, torch.tensor([60] * 16), distinct=16) == "packed"  # nothing shared
