"""The start of a training run (sft, pref, rm): what may be in train.output_dir already is settled here,
before any data or model is loaded, so a wrong folder or option costs seconds, not a model load."""
from __future__ import annotations

import os
import shutil

from alignkit.config import ConfigError, save_config
from alignkit.training.checkpoint import list_checkpoints
from alignkit.training.tracking import check_report_to

FINISHED_MARKS = ("final", "summary.json")  # written only when a run completes
RUN_OUTPUTS = ("checkpoints", "final", "metrics.jsonl", "summary.json", "tensorboard")  # what overwrite deletes


def start_run(cfg) -> str:
    """Check and prepare the output folder of `cfg` (a run config with a `train` section), save the config
    there, and return the folder."""
    train = cfg.train
    out = train.output_dir
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"train.output_dir: {out} is a file, not a folder")
    check_report_to(train.report_to)
    if train.if_exists == "overwrite":
        for name in RUN_OUTPUTS:
            _remove(os.path.join(out, name))
    else:
        _check_previous(train)
    _remove(os.path.join(out, "final.tmp"))  # left by a kill while the final model was being saved
    os.makedirs(out, exist_ok=True)
    save_config(cfg, os.path.join(out, "config.yaml"))
    return out


def _check_previous(train) -> None:
    """A finished run is not retrained by accident: it needs if_exists=extend (and a checkpoint to extend)."""
    out = train.output_dir
    finished = [name for name in FINISHED_MARKS if os.path.exists(os.path.join(out, name))]
    if not finished:
        return
    if train.if_exists == "error":
        raise ConfigError(f"train.output_dir: {out} holds a finished run ({finished[0]} exists); set "
                          "train.if_exists=overwrite to start over, or train.if_exists=extend to continue it")
    if train.resume == "none":
        raise ConfigError("train.if_exists=extend continues from a checkpoint: train.resume must not be none")
    if train.resume == "auto" and not list_checkpoints(out):
        raise ConfigError(f"train.if_exists=extend: {out} has no checkpoint to continue from (train.save_every "
                          "was 0); use train.if_exists=overwrite")


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)
