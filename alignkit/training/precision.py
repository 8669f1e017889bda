"""bf16 training with fp32 master weights, and which precision `auto` means on this machine.

Under bf16 the model computes in bf16 (on GPUs and on CPUs with AMX that is several times faster
than fp32, and unlike autocast no weight is re-cast on every forward), while the optimizer
updates fp32 master copies: small updates are not lost to bf16 rounding. Gradients are moved
into fp32 as soon as each one is produced, so no full set of bf16 gradients stays alive, and
they are freed after every step.
Frozen weights (a LoRA base) keep their fp32 originals aside and get them back at the end.
Under FSDP (train.parallel=fsdp) MasterWeights is not used: the fp32 shards are the masters and FSDP's
mixed-precision policy gathers them as bf16 (training/fsdp.py).
"""
from __future__ import annotations

import torch

PRECISIONS = ("auto", "bf16", "fp32")


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """The precision a run computes in: bf16 or fp32 as asked, or for `auto` the faster one on `device`.

    bf16 where its matrix products are fast: GPUs that support it, and CPUs with AMX tiles. On other CPUs,
    AVX512-BF16 ones included, oneDNN's bf16 products run slower than fp32 ones (measured on 2 such cores:
    about 140 against 240 GFLOP/s at the shapes of a 135M model's training), so `auto` is fp32 there."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if torch.cpu._is_amx_tile_supported() else "fp32"
    return "fp32"


def model_device(model) -> torch.device:
    return next(model.parameters()).device


class MasterWeights:
    def __init__(self, model, *, dtype=torch.bfloat16, hook_grads: bool = True):
        self.model = model
        self.pairs: list[tuple[torch.nn.Parameter, torch.Tensor]] = []  # (compute param, fp32 master)
        self.frozen: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        self._hooks = []
        self.hook_grads = hook_grads
        for p in model.parameters():
            if p.dtype != torch.float32:
                continue
            original = p.data
            p.data = original.to(dtype)
            if p.requires_grad:
                master = original  # the fp32 storage itself becomes the master copy
                self.pairs.append((p, master))
                if hook_grads:
                    self._hooks.append(p.register_post_accumulate_grad_hook(self._make_hook(master)))
            else:
                self.frozen.append((p, original))
        # Buffers such as rotary inverse frequencies stay fp32: they are tiny and precision-sensitive.

    @staticmethod
    def _accumulate(master: torch.Tensor, grad: torch.Tensor) -> None:
        # Allocated on first use and dropped after each step, like set_to_none: between steps,
        # and during the forward pass, no gradient memory is held.
        if master.grad is None:
            master.grad = grad.float()
        else:
            master.grad.add_(grad)

    def _make_hook(self, master: torch.Tensor):
        def hook(p: torch.Tensor) -> None:
            self._accumulate(master, p.grad)
            p.grad = None
        return hook

    def master_params(self) -> list[torch.Tensor]:
        return [m for _, m in self.pairs]

    def collect_grads(self) -> None:
        """Move gradients left on the compute params (when hooks are off, e.g. under DDP)."""
        for p, master in self.pairs:
            if p.grad is not None:
                self._accumulate(master, p.grad)
                p.grad = None

    def zero_grad(self) -> None:
        for _, master in self.pairs:
            master.grad = None

    @torch.no_grad()
    def push(self) -> None:
        """Copy the updated masters into the compute weights."""
        for p, master in self.pairs:
            p.data.copy_(master)

    @torch.no_grad()
    def restore_fp32(self) -> None:
        """Put the model back in fp32 with the exact master / original weights."""
        for h in self._hooks:
            h.remove()
        for p, master in self.pairs:
            master.grad = None
            p.data = master
        for p, original in self.frozen:
            p.data = original
        self.pairs, self.frozen, self._hooks = [], [], []
