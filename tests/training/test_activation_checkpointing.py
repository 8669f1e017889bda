"""Activation checkpointing (training/memory.py: enable_activation_checkpointing): the same loss and gradients
as without it, fewer tensors kept for backward, through LoRA and a value head; the shared_prompt layout, whose
KV cache transformers drops in checkpointed layers, is refused for training and never picked by "auto"."""
import pytest
import torch

from alignkit.config import ConfigError
from alignkit.data.packing import target_positions
from alignkit.models.lora import LoraConfig, apply_lora
from alignkit.models.tiny import tiny_model, tiny_tokenizer
from alignkit.rl.objective import PolicyGradientObjective, PolicyLossConfig
from alignkit.rl.value_head import ActorCritic
from alignkit.training.forward import activation_checkpointing, choose_layout, packed_forward
from alignkit.training.memory import enable_activation_checkpointing
from alignkit.training.sft import SFTObjective
from tests.helpers.rl_runs import hand_batch
from tests.helpers.training import make_examples
from tests.rl.test_ppo import ppo_batch, random_head
from tests.training.test_forward import group_batch


def grads(model) -> dict:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def loss_grads_and_saved(model, objective, batch):
    """(loss, gradients, how many tensors autograd kept for backward outside checkpointed regions)."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(1) or t, lambda t: t):
        loss, _ = objective.loss(model, batch)
    loss.backward()
    return float(loss.detach()), grads(model), len(saved)


def assert_same(a, b):
    assert a[0] == pytest.approx(b[0], rel=1e-5)
    assert a[1].keys() == b[1].keys() and a[1]
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], rtol=1e-4, atol=1e-6, msg=name)


def make_lora(tok):
    model = apply_lora(tiny_model(tok), LoraConfig(enabled=True, r=4, alpha=8))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("chunk", [0, 5])
def test_checkpointing_gives_the_same_sft_loss_and_gradients_and_keeps_less(lora, chunk):
    tok = tiny_tokenizer("chatml")
    objective = SFTObjective(chunk)
    batch = objective.collate(make_examples(tok, 4))
    model = make_lora(tok) if lora else tiny_model(tok)
    plain = loss_grads_and_saved(model, objective, batch)
    assert not activation_checkpointing(model)
    enable_activation_checkpointing(model)
    assert activation_checkpointing(model)
    checkpointed = loss_grads_and_saved(model, objective, batch)
    assert_same(checkpointed, plain)
    assert checkpointed[2] < plain[2] / 2  # the decoder layers' activations are recomputed, not kept
    if lora:
        assert all("lora_" in name for name in plain[1])


def test_checkpointing_covers_the_policy_and_a_separate_critic_of_an_actor_critic():
    tok = tiny_tokenizer("chatml")
    ac = random_head(ActorCritic(make_lora(tok), tiny_model(tok, seed=1)))
    objective = PolicyGradientObjective(PolicyLossConfig(algo="ppo", vf_coef=0.3), temperature=0.7)
    batch = ppo_batch(tok, ac)
    plain = loss_grads_and_saved(ac, objective, batch)
    enable_activation_checkpointing(ac)
    assert activation_checkpointing(ac.policy) and activation_checkpointing(ac.critic)
    checkpointed = loss_grads_and_saved(ac, objective, batch)
    assert_same(checkpointed, plain)
    assert checkpointed[2] < plain[2] / 2


def test_the_shared_prompt_layout_is_refused_for_training_and_left_out_of_auto_under_checkpointing():
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok)
    batch = group_batch()
    keep = target_positions(batch["targets"])
    assert choose_layout(model, batch, keep) == "shared_prompt"  # the group's samples share their prompt
    enable_activation_checkpointing(model)
    with pytest.raises(ValueError, match="train.activation_checkpointing"):
        packed_forward(model, batch, keep, layout="shared_prompt")
    # "auto" leaves it out in training and in eval mode alike, so RL's old (eval) and new (training) log-probs
    # come from one layout
    assert choose_layout(model, batch, keep) != "shared_prompt"
    model.eval()
    assert choose_layout(model, batch, keep) != "shared_prompt"
    # in eval mode transformers does not checkpoint and keeps the cache: an explicit shared_prompt still works
    with torch.no_grad():
        shared = packed_forward(model, batch, keep, layout="shared_prompt").logits
        torch.testing.assert_close(shared, packed_forward(model, batch, keep).logits, rtol=1e-5, atol=1e-5)


def test_an_rl_step_under_checkpointing_equals_the_shared_prompt_step_without_it():
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok)
    batch = hand_batch(tok, model)
    objective = PolicyGradientObjective(PolicyLossConfig(algo="grpo", kl_coef=0.1, entropy_coef=0.2),
                                        temperature=0.7)
    plain = loss_grads_and_saved(model, objective, batch)  # "auto": shared prompts
    enable_activation_checkpointing(model)
    assert_same(loss_grads_and_saved(model, objective, batch), plain)  # "auto": packed or padded


def test_generation_still_works_with_checkpointing_switched_on():
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok).eval()
    prompt = torch.tensor([tok("hello world")["input_ids"]])
    with torch.inference_mode():
        before = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    enable_activation_checkpointing(model)
    with torch.inference_mode():
        after = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert torch.equal(before, after)


def test_a_model_without_a_transformers_model_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="train.activation_checkpointing"):
        enable_activation_checkpointing(torch.nn.Linear(3, 3))
