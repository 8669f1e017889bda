from __future__ import annotations

from dataclasses import dataclass, field


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
    precision: str = "bf16"  # bf16 (bf16 compute, fp32 master weights and optimizer) | fp32
    shuffle: bool = True  # visit examples in a seeded random order each epoch
    eval_every: int = 0  # steps; 0 evaluates only at the end (when an eval set exists)
    save_every: int = 0  # steps; 0 saves only the final model
    save_total_limit: int = 2  # checkpoints kept
    resume: str = "auto"  # auto (latest checkpoint in output_dir) | none | a checkpoint folder
    log_every: int = 1
    report_to: list[str] = field(default_factory=list)  # tensorboard | wandb | mlflow
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    progress: bool = True
