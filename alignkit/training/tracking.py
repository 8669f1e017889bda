"""Where metrics go: always a JSONL file; TensorBoard, Weights & Biases or MLflow on request."""
from __future__ import annotations

import importlib.util
import json
import os

from alignkit.atomic_write import write_text_atomic
from alignkit.config import ConfigError

# report_to target -> the package it needs
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_report_to(report_to: list[str]) -> None:
    """Stop on a tracker whose package is missing now, not after the model and data are loaded."""
    for name in report_to:
        if name in _PACKAGES and importlib.util.find_spec(_PACKAGES[name]) is None:
            raise ConfigError(f"train.report_to includes {name!r} but it is not installed: "
                              f"pip install {_PACKAGES[name]}")


class MetricsLogger:
    """`start_step`: the step training starts after (0 for a fresh run); lines of later steps are dropped."""

    def __init__(self, output_dir: str, report_to: list[str], config: dict | None = None, *, enabled: bool = True,
                 start_step: int = 0):
        self.enabled = enabled
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self._sinks = []
        if not enabled:
            return
        check_report_to(report_to)
        os.makedirs(output_dir, exist_ok=True)
        _drop_after(self.path, start_step)
        for name in report_to:
            self._sinks.append(_open_sink(name, output_dir, config or {}))

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        step = record.get("step", 0)
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        for sink in self._sinks:
            sink(step, scalars)

    def close(self) -> None:
        for sink in self._sinks:
            close = getattr(sink, "close", None)
            if close:
                close()


class StepLog:
    """A JSONL file of a few records per training step (RL's samples.jsonl, online DPO's pairs.jsonl), called
    as the loop's on_step; `records(step)` gives the step's records. Rank 0 writes. A resumed run repeats the
    steps after its checkpoint, so before the first write the lines of those steps are dropped."""

    def __init__(self, path: str, count: int):
        self.path, self.count = path, count
        self.started = False

    def records(self, step: int) -> list[dict]:
        raise NotImplementedError

    def __call__(self, step: int, record: dict) -> None:
        from alignkit.training.distributed import is_main

        if not is_main() or self.count == 0:
            return
        if not self.started:
            _drop_after(self.path, step - 1)
            self.started = True
        rows = self.records(step)
        if rows:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _drop_after(path: str, step: int) -> None:
    """Keep the records up to `step`, so the file reads as one run: a resumed run replays the steps after
    its checkpoint, a fresh one (step 0) starts over. Rewritten through a renamed temp file, so a crash here
    keeps the old file whole."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:  # the last line of a run killed while writing it
                continue
            if record.get("step", 0) <= step:
                kept.append(line.rstrip("\n") + "\n")
    write_text_atomic(path, "".join(kept))


def _open_sink(name: str, output_dir: str, config: dict):
    """`name`'s package passed check_report_to."""
    if name == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(os.path.join(output_dir, "tensorboard"))

        def sink(step, scalars):
            for k, v in scalars.items():
                writer.add_scalar(k, v, step)
        sink.close = writer.close
        return sink
    if name == "wandb":
        import wandb

        run = wandb.init(config=config, dir=output_dir)
        sink = lambda step, scalars: run.log(scalars, step=step)  # noqa: E731
        sink.close = run.finish
        return sink
    if name == "mlflow":
        import mlflow

        mlflow.start_run()
        mlflow.log_params({k: str(v)[:250] for k, v in _flatten(config).items()})
        sink = lambda step, scalars: mlflow.log_metrics(scalars, step=step)  # noqa: E731
        sink.close = mlflow.end_run
        return sink
    raise ValueError(f"unknown report_to target {name!r}: use tensorboard, wandb or mlflow")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out
