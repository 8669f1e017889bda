"""Checkpoints that let a run continue exactly: weights (or adapter), optimizer, scheduler,
RNG states, and the state of the batch source (the position in the data stream) and of the objective.

A checkpoint is written to a temporary folder, flushed to disk and renamed into place, so a crash
while saving never leaves a folder that looks complete. Reading one checks every file before any is
applied, so a damaged checkpoint is skipped (or reported) without touching the model.

Under FSDP (train.parallel=fsdp) a checkpoint holds the same files: the full tensors, gathered to rank 0
before it writes (training/fsdp.py), not one shard per process. Gathering costs a full copy on rank 0's
CPU at every save; in return the layout, the damage checks and the names stay those of every other run,
and a checkpoint resumes with another process count or parallel mode. Loading under FSDP gives each
process the full tensors and it keeps its own shard.
"""
from __future__ import annotations

import json
import pickle
import random
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from alignkit.atomic_write import atomic_dir, remove_leftovers
from alignkit.config import ConfigError
from alignkit.training.fsdp import copy_full_, load_full_optimizer_state

_STEP_DIR = re.compile(r"^step-(\d+)$")
# What reading a cut-short, garbled or missing file raises (torch reports a broken archive as RuntimeError).
_UNREADABLE = (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError)
# The batch source's and objective's states: torch.save, since a source may keep tensors or generator states.
LOOP_STATE = "loop_state.pt"


class DamagedCheckpoint(ValueError):
    """A checkpoint file that cannot be read back: cut short by a kill or a full disk, or damaged later."""


@dataclass
class SavedCheckpoint:
    """Everything one checkpoint folder holds, read into memory and checked, not yet applied."""
    path: Path
    weights: dict
    optimizer: dict
    scheduler: dict
    rng: dict
    state: dict
    # {"source": the batch source's state_dict, "objective": the objective's, or None}
    loop_state: dict = field(default_factory=dict)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(root: str, step: int, *, weights: dict[str, torch.Tensor], optimizer_state: dict, scheduler,
                    state: dict, loop_state: dict, keep: int) -> Path:
    """`weights` are the trained tensors by parameter name (fp32 masters under bf16 training) and
    `optimizer_state` the optimizer's state_dict, both whole (gathered from the shards under FSDP); `state`
    goes to state.json, `loop_state` (the source's and objective's states) to loop_state.pt."""
    final = Path(root) / "checkpoints" / f"step-{step:07d}"
    with atomic_dir(final) as tmp:
        save_file({n: t.detach().contiguous().clone() for n, t in weights.items()}, str(tmp / "trainable.safetensors"))
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        torch.save(loop_state, tmp / LOOP_STATE)
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str) -> list[Path]:
    folder = Path(root) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _STEP_DIR.match(p.name) and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def remove_partial_checkpoints(root: str) -> None:
    """Delete the temporary folders of saves that a kill interrupted (each as large as a checkpoint)."""
    remove_leftovers(Path(root) / "checkpoints")


def read_latest_checkpoint(root: str) -> SavedCheckpoint | None:
    """The newest checkpoint under `root` that reads back whole; damaged newer ones are skipped with a warning."""
    found = list_checkpoints(root)
    for path in reversed(found):
        try:
            return read_checkpoint(path)
        except DamagedCheckpoint as e:
            print(f"alignkit: warning: {e}; skipping it", file=sys.stderr, flush=True)
    if found:
        print(f"alignkit: warning: no usable checkpoint in {Path(root) / 'checkpoints'}; training starts from step 0",
              file=sys.stderr, flush=True)
    return None


def read_checkpoint(path: str | Path) -> SavedCheckpoint:
    """Read and check every file of a checkpoint; raises DamagedCheckpoint naming the folder, file and why."""
    path = Path(path)
    saved = SavedCheckpoint(
        path, weights=_read(path, "trainable.safetensors", lambda f: load_file(str(f))),
        optimizer=_read(path, "optimizer.pt", _torch_load), scheduler=_read(path, "scheduler.pt", _torch_load),
        rng=_read(path, "rng.pt", _torch_load), state=_read(path, "state.json", lambda f: json.loads(f.read_text())))
    _expect(path, "optimizer.pt",
            isinstance(saved.optimizer, dict) and {"state", "param_groups"} <= set(saved.optimizer))
    _expect(path, "scheduler.pt", isinstance(saved.scheduler, dict))
    _expect(path, "rng.pt", isinstance(saved.rng, dict) and {"python", "numpy", "torch"} <= set(saved.rng))
    _expect(path, "state.json", isinstance(saved.state, dict)
            and all(isinstance(saved.state.get(k), int) for k in ("step", "tokens")))
    if isinstance(saved.state.get("micro_index"), int) and not (path / LOOP_STATE).exists():
        # Written before sources kept their own state: state.json held the example stream's position.
        saved.loop_state = {"source": {"micro_index": saved.state["micro_index"]}, "objective": None}
    else:
        saved.loop_state = _read(path, LOOP_STATE, _torch_load)
    _expect(path, LOOP_STATE, isinstance(saved.loop_state, dict) and {"source", "objective"} <= set(saved.loop_state))
    return saved


def load_checkpoint(saved: SavedCheckpoint, *, weights: dict[str, torch.Tensor], optimizer, scheduler) -> dict:
    """Apply a checkpoint from read_checkpoint: its tensors into `weights` (same names as at save time), then
    optimizer, scheduler and RNG states. Returns the saved state (step, tokens); the source's and objective's
    states, in `saved.loop_state`, are the caller's to apply. Sharded (FSDP) weights and optimizer state take
    this process's shard of the saved full tensors."""
    missing = [n for n in weights if n not in saved.weights]
    unknown = [n for n in saved.weights if n not in weights]
    reshaped = [n for n in weights if n in saved.weights and saved.weights[n].shape != weights[n].shape]
    if missing or unknown or reshaped:
        raise ConfigError(f"checkpoint {saved.path} is from another model (missing {missing[:3]}, unknown "
                          f"{unknown[:3]}, other shape {reshaped[:3]}): use another train.output_dir, "
                          "or train.if_exists=overwrite")
    load_full_optimizer_state(optimizer, saved.optimizer)
    scheduler.load_state_dict(saved.scheduler)
    for name, tensor in saved.weights.items():
        copy_full_(weights[name], tensor)
    set_rng_state(saved.rng)
    return saved.state


def _torch_load(file: Path):
    # CPU first: a checkpoint saved on a GPU stays readable without one; load_state_dict moves the tensors.
    return torch.load(file, map_location="cpu", weights_only=False)


def _read(folder: Path, name: str, reader):
    try:
        return reader(folder / name)
    except _UNREADABLE as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DamagedCheckpoint(f"checkpoint {folder}: {name} is unreadable ({reason})") from None


def _expect(folder: Path, name: str, ok: bool) -> None:
    if not ok:
        raise DamagedCheckpoint(f"checkpoint {folder}: {name} does not hold what a checkpoint saves")
