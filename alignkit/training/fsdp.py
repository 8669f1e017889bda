"""Fully sharded data parallelism with torch's FSDP2 (`torch.distributed.fsdp.fully_shard`), for train.parallel=fsdp.

Each transformer block is sharded as one unit, then the root (embeddings, final norm, output layer, a value or
score head): every parameter becomes a DTensor holding 1/world of it, so parameters, gradients and the optimizer's
state are all divided among the processes. A unit's full weights are all-gathered just before its forward (and
again in backward when train.fsdp_reshard_after_forward is true) and its gradients reduce-scattered after its
backward. Under precision=bf16 the sharded parameters stay fp32 and FSDP's MixedPrecisionPolicy gathers them as
bf16 and reduces gradients in fp32, which is what precision.MasterWeights does for the other runs.

A sharded twin, and the caller's model given back. `fully_shard` changes the modules it is applied to for good
(their class, their hooks, DTensor parameters), while everything after train() — final/ written with
save_pretrained, a LoRA merge, a value head saved beside the policy, a later stage in the same process — expects
the plain model that one process and DDP leave. So `shard` applies FSDP to a copy of the module tree that shares
the caller's tensors (nothing is copied), then frees the caller's parameter storage while training runs, and
`give_back` gathers the trained full weights into the caller's parameters on every process at the end. Until
then the caller's model holds empty parameters: the loop runs only the twin, and passes the twin to batch
sources and objectives.

Checkpoints hold full tensors gathered to rank 0 (`gather_full`, `gather_optimizer_state`), in the layout one
process writes: the same files and names, the optimizer state keyed by position. The checks that find a damaged
checkpoint apply unchanged, and a checkpoint resumes under any number of processes and either parallel mode.
Loading gives every process the full tensors read from disk; each keeps its own shard (`copy_full_`,
`load_full_optimizer_state`, no communication). Sharded checkpoints (torch.distributed.checkpoint) would save
the gather on very large models, at the cost of a layout of their own and a fixed process count per reader.

Forwards are collective under FSDP: every process must run the same units the same number of times. Training
and evaluation do (evaluation pads short ranks with a discarded batch), but sampling does not: a process stops
when its own samples end. `gathered` unshards every unit for such work, so its forwards run no collective.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from alignkit.training.distributed import broadcast_from_main, device_mesh, rank_world


def is_sharded(tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def check_supported(cfg) -> None:
    """One ConfigError, before anything loads, for a run config whose model FSDP cannot shard: with several
    processes and train.parallel=fsdp, a 4-bit base (QLoRA: bitsandbytes' packed weights and their quantization
    state are not tensors FSDP can split and gather)."""
    from alignkit.config import ConfigError
    from alignkit.training.distributed import launched

    train, model = getattr(cfg, "train", None), getattr(cfg, "model", None)
    if getattr(train, "parallel", "ddp") != "fsdp" or not launched():
        return
    quantization = getattr(model, "quantization", "none")
    if quantization not in ("none", "", None):
        raise ConfigError(f"train.parallel=fsdp cannot shard a quantized base (model.quantization={quantization}); "
                          "use train.parallel=ddp")


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated transformer blocks: modules of the classes Hugging Face models name in
    `_no_split_modules` (what accelerate's FSDP wrapping uses), found anywhere inside (a peft model, a reward
    model or a value head around the transformer); else the members of the largest ModuleList of one class.
    Outermost only: a block inside another is part of it."""
    names = set()
    for module in model.modules():
        declared = getattr(module, "_no_split_modules", None)
        if isinstance(declared, (list, tuple, set)):
            names.update(declared)
    found = [m for m in model.modules() if type(m).__name__ in names] if names else []
    if not found:
        lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 1
                 and len({type(c) for c in m}) == 1]
        if lists:
            found = list(max(lists, key=lambda m: sum(p.numel() for p in m.parameters())))
    inside = {id(sub) for block in found for sub in block.modules() if sub is not block}
    blocks = [m for m in found if id(m) not in inside]
    # A unit owns its parameters alone: a block with a weight tied to one outside it stays in the root's unit.
    owners: dict[int, set[int]] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            owners.setdefault(id(param), set()).add(id(module))

    def alone(block: nn.Module) -> bool:
        mine = {id(m) for m in block.modules()}
        return all(owners[id(p)] <= mine for p in block.parameters())
    return [b for b in blocks if alone(b)]


@dataclass
class Sharded:
    """A model trained under FSDP: `module` is the sharded twin to run and optimize."""
    module: nn.Module
    origin: nn.Module  # the caller's model, parameters emptied until give_back
    reshard_after_forward: bool
    blocks: list[nn.Module] = field(default_factory=list)  # FSDP units, the root last
    params: dict[str, nn.Parameter] = field(default_factory=dict)  # the twin's sharded parameters by name
    _origin_params: dict[str, nn.Parameter] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._by_origin = {id(p): self.params[n] for n, p in self._origin_params.items()}

    def counterpart(self, origin_param: nn.Parameter) -> nn.Parameter:
        """The sharded parameter that trains in place of one of the caller's parameters."""
        return self._by_origin[id(origin_param)]

    @property
    def units(self) -> list[nn.Module]:
        return [*self.blocks, self.module]

    def sync_gradients(self, sync: bool) -> None:
        """Whether this backward reduce-scatters gradients (the last micro-batch of a step) or only adds to the
        local unsharded ones (the micro-batches before it), as DDP's no_sync."""
        self.module.set_requires_gradient_sync(sync)

    @contextmanager
    def gathered(self) -> Iterator[None]:
        """Every unit's full weights all-gathered once and kept until the end, so the forwards inside run no
        collective and the processes may run different numbers of them (sampling: each stops at its own
        lengths). Entered and left by every process together; the gather happens outside any inference mode,
        which would make the gathered weights unusable for training."""
        for unit in self.units:
            unit.set_reshard_after_forward(False, recurse=False)
        try:
            for unit in self.units:
                unit.unshard()
            yield
        finally:
            for unit in self.units:
                unit.reshard()
            self._set_resharding()

    def _set_resharding(self) -> None:
        for block in self.blocks:
            block.set_reshard_after_forward(self.reshard_after_forward, recurse=False)
        # The root's weights (embeddings, output layer) are needed again as soon as backward starts.
        self.module.set_reshard_after_forward(False, recurse=False)

    @torch.no_grad()
    def give_back(self) -> None:
        """Gather the trained full weights into the caller's model, on every process (a collective)."""
        for unit in self.units:
            unit.reshard()
        for name, param in self.params.items():
            self._origin_params[name].data = param.full_tensor()


def shard(model: nn.Module, *, mixed_precision: bool, reshard_after_forward: bool) -> Sharded:
    """FSDP2 over a twin of `model` that shares its tensors: each transformer block a unit, then the root. With
    `mixed_precision`, bf16 compute over fp32 sharded parameters and fp32 gradient reduction."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    device = next(model.parameters()).device
    # FSDP takes each process's shard from that process's copy: they must all hold rank 0's weights first.
    broadcast_from_main([*model.parameters(), *model.buffers()])
    origin_params = dict(model.named_parameters())
    # The twin's modules are new objects around the caller's own parameters and buffers.
    shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    twin = copy.deepcopy(model, memo=shared)
    mesh = device_mesh(device.type)
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision
              else MixedPrecisionPolicy())
    blocks = transformer_blocks(twin)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(twin, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    params = dict(twin.named_parameters())
    if params.keys() != origin_params.keys():
        raise RuntimeError("sharding renamed the model's parameters")
    # FSDP finds its root at the first forward. Sampling may first run a submodule (peft's generate runs the
    # wrapped transformers model), which would then take itself for the root; settle it now.
    fully_shard.state(twin)._lazy_init()
    # FSDP allocates a unit's gathered weights at its first all-gather and writes every later gather into
    # them. Allocated under inference mode (a first forward that samples, as LocalBackend does), they would
    # refuse the gathers of training; so the first gather of every unit happens here.
    for unit in [*blocks, twin]:
        unit.unshard()
        unit.reshard()
    for param in origin_params.values():  # the shards hold the weights now
        param.data = torch.empty(0, dtype=param.dtype, device=param.device)
    return Sharded(twin, model, reshard_after_forward, blocks, params, origin_params)


# ---------------------------------------------------------------- full tensors for checkpoints

@torch.no_grad()
def gather_full(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The full tensors of sharded ones, by name, on the CPU of rank 0 (other ranks get {}): a collective, in
    the dict's order, which is the same on every process. Unsharded tensors pass as they are."""
    main = rank_world()[0] == 0
    out = {}
    for name, tensor in tensors.items():
        full = tensor.full_tensor() if is_sharded(tensor) else tensor
        if main:
            out[name] = full.detach().cpu() if torch.is_tensor(full) else full
    return out


@torch.no_grad()
def gather_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """`optimizer.state_dict()` with every sharded state tensor gathered whole, as one process would save it,
    on rank 0 ({} elsewhere). A collective."""
    state = optimizer.state_dict()
    full = {index: gather_full(values) for index, values in state["state"].items()}
    return {"state": full, "param_groups": state["param_groups"]} if rank_world()[0] == 0 else {}


@torch.no_grad()
def copy_full_(target: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a full tensor into `target`, or into this process's shard of it when `target` is sharded."""
    if is_sharded(target):
        from torch.distributed.tensor import distribute_tensor

        # src_data_rank=None: every process holds the full tensor and keeps its own shard, no communication.
        full = distribute_tensor(full.to(target.device, target.dtype), target.device_mesh, target.placements,
                                 src_data_rank=None)
    target.copy_(full)


def load_full_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """`optimizer.load_state_dict` for a state saved whole (by one process, or by gather_optimizer_state):
    each state tensor shaped like its sharded parameter is cut to this process's shard first."""
    from torch.distributed.tensor import distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not any(is_sharded(p) for p in params):
        optimizer.load_state_dict(state)
        return
    local = {}
    for index, values in state["state"].items():
        param = params[int(index)]
        local[index] = {key: (distribute_tensor(value.to(param.device), param.device_mesh, param.placements,
                                                src_data_rank=None)
                              if is_sharded(param) and torch.is_tensor(value) and value.shape == param.shape
                              and value.dim() > 0 else value)
                        for key, value in values.items()}
    optimizer.load_state_dict({"state": local, "param_groups": state["param_groups"]})


def full_value(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded or partial scalar (a gradient norm computed over shards) as a plain one."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor
