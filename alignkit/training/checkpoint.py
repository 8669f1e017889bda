"""Checkpoints that let a run continue exactly: weights (or adapter), optimizer, scheduler,
RNG states and the position in the data stream.

A checkpoint is written to a temporary folder and renamed into place, so a crash while saving
never leaves a folder that looks complete.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

_STEP_DIR = re.compile(r"^step-(\d+)$")


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


def save_checkpoint(root: str, step: int, *, weights: dict[str, torch.Tensor], optimizer, scheduler, state: dict,
                    keep: int) -> Path:
    """`weights` are the trained tensors by parameter name (fp32 masters under bf16 training)."""
    root_path = Path(root) / "checkpoints"
    root_path.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root_path, prefix=".tmp-"))
    try:
        save_file({n: t.detach().contiguous().clone() for n, t in weights.items()}, str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
        final = root_path / f"step-{step:07d}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str) -> list[Path]:
    folder = Path(root) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _STEP_DIR.match(p.name) and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def load_checkpoint(path: str | Path, *, weights: dict[str, torch.Tensor], optimizer, scheduler) -> dict:
    """Copy the saved tensors into `weights` (same names as at save time) and restore the rest."""
    path = Path(path)
    saved = load_file(str(path / "trainable.safetensors"))
    missing = [n for n in weights if n not in saved]
    unknown = [n for n in saved if n not in weights]
    if missing or unknown:
        raise RuntimeError(f"checkpoint {path} does not match the model: missing {missing[:5]}, unknown {unknown[:5]}")
    with torch.no_grad():
        for name, tensor in saved.items():
            weights[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return json.loads((path / "state.json").read_text())
