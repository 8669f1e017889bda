"""Rollouts sampled by vLLM (`rollout.backend=vllm`): one engine in the training process ("colocate"),
started from the policy's weights at the first rollout and given the trained weights before each later one.
The sampling methods that train what they sample from (online and iterative DPO, expert iteration, RSO:
`sampling.backend=vllm`) use the same engine the same way, through reward_sampling.candidates.PolicySampler.

Start: the plain causal LM (an ActorCritic's policy; a LoRA policy with its adapter folded in) is written in
the Hugging Face layout, with the tokenizer and the generation config, to a temporary folder, and the engine
starts from it, in the dtype the policy computes in. The folder is removed when the sampler closes.

Sync: the loop calls the source at `step` after `step` optimizer steps, so the engine's weights are the
policy's as long as the step is the one they were taken at; at a rollout of a later step every weight is
streamed to the engine's `load_weights` (one tensor at a time, never a second copy of the model), and its
prefix cache, which the old weights computed, is dropped. A LoRA policy's merged weights are computed beside
the training weights, layer by layer: the training model is not touched, its adapter stays unmerged and active.

Loading weights needs the engine's model in this process. vLLM's V1 engine runs in a separate process unless
VLLM_ENABLE_V1_MULTIPROCESSING=0, which the sampler sets when it is not set; set to anything else, starting
the engine stops with an error saying so (vllm_backend.ENGINE_NOT_IN_PROCESS).

The engine is not part of a checkpoint: after a resume the first rollout starts it from the restored weights.
"""
from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Iterator

import torch

from alignkit.models.lora import is_peft
from alignkit.rl.value_head import unwrap_policy

WEIGHTS_FILE = "model.safetensors"


def checkpoint_name(name: str) -> str:
    """A peft model's parameter name as the plain model's checkpoint names it."""
    name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
    return re.sub(r"\.modules_to_save\.[^.]+\.", ".", name)


def _skipped(name: str) -> bool:
    """The adapter's own tensors, and the frozen originals of peft's modules_to_save."""
    parts = name.split(".")
    return "original_module" in parts or any(part.startswith("lora_") for part in parts)


def _folded(layer, leaf: str, tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` (the base layer's `leaf`, weight or bias) with the layer's active adapters added, as peft's
    merge would leave it, in a new tensor."""
    if layer.merged or layer.disable_adapters:  # the weight already holds them, or they are off
        return tensor
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A:
            continue
        if leaf == "weight":
            variant = getattr(layer, "lora_variant", {}).get(adapter)
            if variant is not None:  # e.g. DoRA
                tensor = variant.merge_safe(layer, adapter, tensor.clone())
            else:
                tensor = (tensor + layer.get_delta_weight(adapter)).to(tensor.dtype)
        elif leaf == "bias" and layer.lora_bias.get(adapter, False):
            tensor = (tensor + layer.lora_B[adapter].bias * layer.scaling[adapter]).to(tensor.dtype)
    return tensor


def policy_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """The plain causal LM's weights, one at a time, under the names of its Hugging Face checkpoint: of an
    ActorCritic the policy's alone; of a peft model the base weights with the active LoRA adapters folded in
    (new tensors, one layer at a time; the model is left as it is) and without the adapters' own tensors.
    Tied weights come once, as `named_parameters` gives them."""
    policy = unwrap_policy(model)
    if not is_peft(policy):
        for name, param in policy.named_parameters():
            yield name, param.detach()
        return
    from peft.tuners.lora import LoraLayer

    layers = {name: module for name, module in policy.named_modules() if isinstance(module, LoraLayer)}
    for name, param in policy.named_parameters():
        if _skipped(name):
            continue
        owner, found, leaf = name.partition(".base_layer.")
        tensor = param.detach()
        if found and owner in layers:
            with torch.no_grad():  # not around the yield: the caller's code would run without gradients
                tensor = _folded(layers[owner], leaf, tensor)
        yield checkpoint_name(name), tensor


def plain_model(model):
    """The transformers model under the policy (peft's base model for a LoRA policy)."""
    policy = unwrap_policy(model)
    return policy.get_base_model() if is_peft(policy) else policy


def compute_dtype(model) -> str:
    """The dtype the policy's weights compute in (its input embeddings'), as vLLM names it."""
    return str(plain_model(model).get_input_embeddings().weight.dtype).removeprefix("torch.")


def write_policy(model, tokenizer, folder: str) -> None:
    """The policy as `policy_weights` gives it, in the Hugging Face layout (config, generation config,
    one safetensors file, tokenizer) that vLLM and transformers load."""
    from safetensors.torch import save_file

    lm = plain_model(model)
    os.makedirs(folder, exist_ok=True)
    lm.config.save_pretrained(folder)
    if getattr(lm, "generation_config", None) is not None:
        lm.generation_config.save_pretrained(folder)
    tensors = {name: tensor.contiguous().cpu() for name, tensor in policy_weights(model)}
    save_file(tensors, os.path.join(folder, WEIGHTS_FILE), metadata={"format": "pt"})
    tokenizer.save_pretrained(folder)


class VLLMSampler:
    """One vLLM engine in this process and the version of the weights it holds. `engine(version, model)` gives
    the engine holding `model`'s weights, starting it at the first call and pushing the weights whenever
    `version` differs from the last call's. A version is any value that changes whenever the weights do: RL
    rollouts pass the optimizer step, the sampling methods (reward_sampling.candidates.PolicySampler) a step,
    a round's model folder, or a count of trainings."""

    def __init__(self, tokenizer, *, seed: int, gpu_memory_utilization: float, max_model_len: int = 0,
                 folder_parent: str | None = None, **engine_options):
        self.tokenizer, self.seed = tokenizer, seed
        self.gpu_memory_utilization, self.max_model_len = gpu_memory_utilization, max_model_len
        self.folder_parent, self.engine_options = folder_parent, engine_options
        self.backend = None
        self.step = None  # the version of the weights the engine holds (for RL, an optimizer step)
        self.pushes = 0
        self.last_sync_seconds = 0.0  # the latest start or push
        self._folder: tempfile.TemporaryDirectory | None = None

    def engine(self, version, model):
        started = time.perf_counter()
        if self.backend is None:
            self._start(model)
        elif version != self.step:
            self.backend.push_weights(policy_weights(model))
            self.pushes += 1
        self.step = version
        self.last_sync_seconds = time.perf_counter() - started
        return self.backend

    def invalidate(self) -> None:
        """The model's weights were replaced (a checkpoint was loaded): push them before the next rollout."""
        self.step = None

    def _start(self, model) -> None:
        from alignkit.generation.vllm_backend import MULTIPROCESSING_ENV, VLLMBackend, import_vllm

        import_vllm()  # a missing vLLM says so before the policy is written out
        os.environ.setdefault(MULTIPROCESSING_ENV, "0")  # the engine in this process, where its weights are
        self._folder = tempfile.TemporaryDirectory(prefix="alignkit-vllm-policy-", dir=self.folder_parent)
        try:
            folder = self._folder.name
            write_policy(model, self.tokenizer, folder)
            backend = VLLMBackend(folder, tokenizer=folder, dtype=compute_dtype(model),
                                  gpu_memory_utilization=self.gpu_memory_utilization,
                                  max_model_len=self.max_model_len or None, seed=self.seed,
                                  logprobs_mode="processed_logprobs", **self.engine_options)
            backend.engine_model()  # an engine out of process fails here, not at the first push
        except BaseException:
            self.close()
            raise
        self.backend = backend

    def close(self) -> None:
        """Drop the engine and remove its folder."""
        self.backend, self.step = None, None
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None
