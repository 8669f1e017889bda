"""What every training run (sft, pref, rm, and later the RL runs) does around its own training.

`prepare_run` first settles what may be in train.output_dir, before any data or model is loaded, so a
wrong folder or option costs seconds, not a model load; then it loads the tokenizer with its chat
template and the data. `finish_run` saves final/ and summary.json. With several processes rank 0 alone
writes the run's files, and every rank returns only once they are complete.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Any, Callable

from alignkit.atomic_write import atomic_dir, remove_leftovers, write_json_atomic
from alignkit.config import ConfigError, save_config, validate_config
from alignkit.training.checkpoint import list_checkpoints
from alignkit.training.distributed import is_main, on_main
from alignkit.training.fsdp import check_supported
from alignkit.training.loop import TrainResult
from alignkit.training.tracking import check_report_to

FINAL, SUMMARY = "final", "summary.json"
FINISHED_MARKS = (FINAL, SUMMARY)  # written only when a run completes
RUN_OUTPUTS = ("checkpoints", FINAL, "metrics.jsonl", SUMMARY, "tensorboard")  # what overwrite deletes


@dataclass
class RunContext:
    cfg: Any  # a run config with `model` and `train` sections
    tokenizer: Any  # with the chat template every conversation goes through
    train_examples: list
    eval_examples: list

    @property
    def out(self) -> str:
        return self.cfg.train.output_dir


def prepare_run(cfg, load_data: Callable[[Any], tuple[list, list, dict]], *, tokenizer=None) -> RunContext:
    """Check `cfg`, prepare its output folder (config.yaml), load the tokenizer unless given, then the data:
    `load_data(tokenizer)` returns (train examples, eval examples, data report), the report going to
    data_report.json."""
    from alignkit.models.loading import load_tokenizer, use_chat_template

    validate_config(cfg)  # configs built in Python never went through load_config
    check_supported(cfg)  # train.parallel=fsdp against the model section, before the model loads
    on_main(lambda: _prepare_folder(cfg))
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg.model.name)
    tokenizer = use_chat_template(tokenizer, cfg.model.chat_template, cfg.model.name)
    # Data before the caller loads the model: a bad record fails in seconds.
    train_examples, eval_examples, report = load_data(tokenizer)
    if is_main():
        write_json_atomic(os.path.join(cfg.train.output_dir, "data_report.json"), report, allow_nan=True)
    return RunContext(cfg, tokenizer, train_examples, eval_examples)


def finish_run(ctx: RunContext, result: TrainResult, write_model: Callable[[str], None]) -> None:
    """final/ (`write_model(folder)` fills it; it replaces an earlier final/ only once complete), then
    summary.json."""
    def write() -> None:
        with atomic_dir(os.path.join(ctx.out, FINAL)) as folder:
            write_model(str(folder))
        write_json_atomic(os.path.join(ctx.out, SUMMARY), run_summary(result), allow_nan=True)

    on_main(write)


def run_summary(result: TrainResult) -> dict:
    """summary.json, the same for every run: `final` is the last logged training record (loss and the
    objective's metrics), `eval` the last evaluation record; either is None when none was logged."""
    return {"steps": result.steps, "tokens": result.tokens, "seconds": result.seconds,
            "tokens_per_s": result.tokens / max(result.seconds, 1e-9),
            "final": result.history[-1] if result.history else None,
            "eval": result.eval_history[-1] if result.eval_history else None}


def save_lm(model, tokenizer, folder: str, *, lora: bool, merge: bool) -> None:
    """A causal LM in the Hugging Face layout; with LoRA also the adapter alone, in folder/adapter, and the
    merged model only when `merge`."""
    from alignkit.models.lora import save_model

    if lora:
        model.save_pretrained(os.path.join(folder, "adapter"))
    save_model(model, tokenizer, folder, merge=merge or not lora)


def _prepare_folder(cfg) -> None:
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
    remove_leftovers(out)  # e.g. a final model a kill interrupted while it was being saved
    os.makedirs(out, exist_ok=True)
    save_config(cfg, os.path.join(out, "config.yaml"))


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
