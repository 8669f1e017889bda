from __future__ import annotations

import os
from dataclasses import dataclass, field

from alignkit.config import require, require_choice, require_number
from alignkit.training.precision import PRECISIONS

SCHEDULES = ("cosine", "linear", "constant")
REPORT_TARGETS = ("tensorboard", "wandb", "mlflow")
IF_EXISTS = ("error", "overwrite", "extend")
PARALLEL = ("ddp", "fsdp")


@dataclass
class TrainConfig:
    output_dir: str = "runs/latest"
    max_steps: int = 0  # optimizer steps; 0 means derive from epochs
    epochs: float = 1.0
    batch_size: int = 8  # examples per micro-batch (packed into one row)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 2e-5
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    schedule: str = "cosine"  # cosine | linear | constant (after warm-up)
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # used when warmup_steps is 0
    min_lr_ratio: float = 0.0  # the decay ends at lr * min_lr_ratio
    max_grad_norm: float = 1.0  # 0 disables clipping
    seed: int = 0
    precision: str = "auto"  # auto (bf16 on GPUs and AMX CPUs, else fp32: training/precision.py) | bf16 (bf16 compute, fp32 master weights and optimizer) | fp32
    shuffle: bool = True  # visit examples in a seeded random order each epoch
    eval_every: int = 0  # steps; 0 evaluates only at the end (when an eval set exists)
    save_every: int = 0  # steps; 0 saves only the final model
    save_total_limit: int = 2  # checkpoints kept; 0 keeps every one
    resume: str = "auto"  # auto (latest checkpoint in output_dir) | none | a checkpoint folder
    if_exists: str = "error"  # a finished run in output_dir: error (stop) | overwrite (start over) | extend (continue from its last checkpoint)
    log_every: int = 1
    report_to: list[str] = field(default_factory=list)  # tensorboard | wandb | mlflow
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    progress: bool = True
    parallel: str = "ddp"  # with several processes (torchrun, accelerate launch): ddp (replicated model) | fsdp (FSDP2: parameters, gradients and optimizer state sharded)
    fsdp_reshard_after_forward: bool = True  # fsdp: free each block's gathered weights after its forward (less memory, one more all-gather in backward)
    activation_checkpointing: bool = False  # recompute each block's activations in backward instead of keeping them
    loss_chunk_size: int = 0  # 0: logits of every target position at once; N: the output layer and log-softmax N positions at a time (long sequences, large vocabularies)

    def validate(self, where: str = "train") -> None:
        """Every value checked here, so a bad one fails before the model loads, not inside torch."""
        self._validate_steps(where)
        self._validate_optimizer(where)
        require(isinstance(self.output_dir, str) and bool(self.output_dir), where, "output_dir",
                "a folder path", self.output_dir)
        require_number(where, "seed", self.seed, low=0, high=2**32 - 1, whole=True)  # numpy's seed range
        require_choice(where, "precision", self.precision, PRECISIONS)
        require_choice(where, "if_exists", self.if_exists, IF_EXISTS)
        require(isinstance(self.resume, str) and (self.resume in ("auto", "none") or os.path.isdir(self.resume)),
                where, "resume", "auto, none or an existing checkpoint folder", self.resume)
        for i, target in enumerate(self.report_to):
            require_choice(where, f"report_to[{i}]", target, REPORT_TARGETS)
        require_number(where, "threads", self.threads, low=0, whole=True)
        require_choice(where, "parallel", self.parallel, PARALLEL)
        for key in ("fsdp_reshard_after_forward", "activation_checkpointing"):
            require(isinstance(getattr(self, key), bool), where, key, "true or false", getattr(self, key))
        require_number(where, "loss_chunk_size", self.loss_chunk_size, low=0, whole=True)

    def _validate_steps(self, where: str) -> None:
        require_number(where, "max_steps", self.max_steps, low=0, whole=True)
        # epochs only counts when max_steps is 0; then it must give at least some training.
        require_number(where, "epochs", self.epochs, low=0, low_open=not self.max_steps)
        for key in ("batch_size", "grad_accum", "log_every"):
            require_number(where, key, getattr(self, key), low=1, whole=True)
        for key in ("warmup_steps", "eval_every", "save_every", "save_total_limit"):
            require_number(where, key, getattr(self, key), low=0, whole=True)

    def _validate_optimizer(self, where: str) -> None:
        require_number(where, "lr", self.lr, low=0, low_open=True)
        require_number(where, "weight_decay", self.weight_decay, low=0)
        betas = self.adam_betas
        require(isinstance(betas, (list, tuple)) and len(betas) == 2, where, "adam_betas", "two numbers", betas)
        for i, beta in enumerate(betas):
            require_number(where, f"adam_betas[{i}]", beta, low=0, high=1, high_open=True)
        require_number(where, "adam_eps", self.adam_eps, low=0, low_open=True)
        require_choice(where, "schedule", self.schedule, SCHEDULES)
        require_number(where, "warmup_ratio", self.warmup_ratio, low=0, high=1)
        require_number(where, "min_lr_ratio", self.min_lr_ratio, low=0, high=1)
        require_number(where, "max_grad_norm", self.max_grad_norm, low=0)
