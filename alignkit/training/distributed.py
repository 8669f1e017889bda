"""The one place that knows about torch.distributed: joining the process group a launcher describes,
rank and world size, collectives, the DDP wrapper, rank-0-only work, and teardown. (FSDP's sharding, over
the same group, is in fsdp.py.)

torchrun and `accelerate launch` start one process per device with RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT set. Every function here is a no-op (or returns the single-process answer)
when WORLD_SIZE is unset or 1, so the same code serves both kinds of run.
"""
from __future__ import annotations

import contextlib
import gc
import os
import weakref
from typing import Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
_meshes: list[weakref.ref] = []  # device meshes made by device_mesh, whose process group teardown releases


class PeerFailed(RuntimeError):
    """Raised on the other ranks when rank 0 failed in work only it does (it reports the error itself)."""


def launched() -> bool:
    """True when the environment describes a run of more than one process."""
    raw = os.environ.get("WORLD_SIZE", "").strip() or "1"
    if not raw.isdigit():
        raise ValueError(f"environment variable WORLD_SIZE must be a whole number, not {raw!r}")
    return int(raw) > 1


def init_from_env() -> bool:
    """Join the process group the launcher describes; True when this process is now one of several.
    Calling it again, or in a single-process run, changes nothing."""
    if not launched() or not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    # DDP imports torch.distributed.nn, whose functions take `group.WORLD` as a default argument. Imported
    # while a group exists, they keep it alive after destroy_process_group, and gloo's threads then outlive
    # the interpreter: one that frees a tensor Python made aborts the process at exit. Imported first, the
    # defaults are None and teardown really ends the group.
    import torch.distributed.nn  # noqa: F401

    dist.init_process_group(_backend())
    return True


def _backend() -> str:
    """gloo for CPU tensors; with one GPU per process, NCCL for CUDA tensors (collectives go by device)."""
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if torch.cuda.is_available() and local < torch.cuda.device_count():
        torch.cuda.set_device(local)
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def rank_world() -> tuple[int, int]:
    """(this process's rank, number of processes); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on the process that writes files and prints for the run (rank 0)."""
    return rank_world()[0] == 0


def all_sum(x: float) -> float:
    """`x` summed over all processes (float64 on the CPU, so it goes through gloo whatever the backend)."""
    if rank_world()[1] == 1:
        return x
    t = torch.tensor([float(x)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def all_gather_objects(obj: T) -> list[T]:
    """Every process's `obj` (picklable), in rank order; [obj] outside a process group. Every process must
    call it, at the same point. For small per-step data (a rollout's rewards, a few samples to log); tensors
    inside come back on the CPU."""
    if rank_world()[1] == 1:
        return [obj]
    out: list = [None] * rank_world()[1]
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait until every process gets here. An all-reduce on the CPU rather than dist.barrier, which under
    NCCL needs a device chosen per process."""
    all_sum(0.0)


def device_mesh(device_type: str):
    """A one-dimensional device mesh over every process (FSDP's), for tensors on `device_type`."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device_type, (rank_world()[1],))
    _meshes.append(weakref.ref(mesh))
    return mesh


@torch.no_grad()
def broadcast_from_main(tensors) -> None:
    """Overwrite every tensor in place with rank 0's (each process passes the same tensors in the same order):
    the start of a run that does not wrap its model in DDP, which would do this itself. Weights one process
    drew at random (a fresh LoRA adapter, a value head) then start equal everywhere."""
    if rank_world()[1] == 1:
        return
    for tensor in tensors:
        dist.broadcast(tensor.detach(), src=0)


def wrap(model):
    """`model` in DistributedDataParallel when there are several processes, else `model` itself."""
    if rank_world()[1] == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(model)


def on_main(fn: Callable[[], T]) -> T | None:
    """Run `fn` on rank 0 only (work that writes shared files) and hold every rank until it is done.
    Returns its result on rank 0 and None elsewhere; if it fails, rank 0 raises its error and the others
    PeerFailed, so no rank waits for one that has stopped."""
    if rank_world()[1] == 1:
        return fn()
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except BaseException as e:  # re-raised below, once the others know
            error = e
    failed = all_sum(float(error is not None))
    if error is not None:
        raise error
    if failed:
        raise PeerFailed("stopped because rank 0 failed (its error says why)")
    return result


def main_first(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0, then on the others: rank 0 fills a cache the others then read instead of
    computing (and writing) the same entry at the same time."""
    result = on_main(fn)
    return result if is_main() else fn()


def teardown(*, failed: bool = False) -> None:
    """Leave the process group. After a success every rank waits for the others first; after a failure
    it leaves at once, since the others may never get to the barrier."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if not failed:
        barrier()
    _release_meshes()
    dist.destroy_process_group()


def _release_meshes() -> None:
    """Let go of the process group held by the device meshes made here. DTensor caches what it worked out for
    every operation it ran, meshes included, for the life of the process, and a mesh holds its process group:
    the group would outlive destroy_process_group, and its gloo threads run on into interpreter exit (see
    init_from_env). Emptying the meshes' group registry (torch keeps no public handle on it) leaves the
    group's last reference to destroy_process_group. Modules sharded over a mesh hold the group too; by now
    they are unreachable, and collecting them (they form reference cycles) drops those references."""
    if not _meshes:
        return
    gc.collect()
    for ref in _meshes:
        mesh = ref()
        registry = getattr(mesh, "_pg_registry", None)
        if isinstance(registry, dict):
            registry.clear()
    _meshes.clear()


@contextlib.contextmanager
def process_group(enabled: bool = True) -> Iterator[None]:
    """For a command that trains: join the group the launcher describes, let only rank 0 print to stdout
    (every rank would print the same data report and 'saved to' line), and leave the group at the end."""
    if not (enabled and init_from_env()):
        yield
        return
    quiet = open(os.devnull, "w") if not is_main() else None
    try:
        with contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext():
            yield
    except BaseException:
        teardown(failed=True)
        raise
    else:
        teardown()
    finally:
        if quiet:
            quiet.close()
