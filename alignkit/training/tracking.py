"""Where metrics go: always a JSONL file; TensorBoard, Weights & Biases or MLflow on request."""
from __future__ import annotations

import json
import os


class MetricsLogger:
    def __init__(self, output_dir: str, report_to: list[str], config: dict | None = None, *, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self._sinks = []
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
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


def _open_sink(name: str, output_dir: str, config: dict):
    try:
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
    except ImportError:
        raise RuntimeError(f"report_to includes {name!r} but the package is not installed (pip install {name})") from None
    raise ValueError(f"unknown report_to target {name!r}: use tensorboard, wandb or mlflow")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out
