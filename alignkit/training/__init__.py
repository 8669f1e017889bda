"""Training: one loop (`train`) with one objective per stage, and the runs the CLI calls:
`run_sft`, `run_pref` (the DPO family, rankings, KTO, control tokens) and `run_rm` (reward models),
each from its config dataclass. Names are imported on first use (lazy_exports): every module
here imports torch.
"""
from alignkit.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "sft": ("SFTConfig", "run_sft"),
    "pref_run": ("PrefConfig", "run_pref"),
    "reward": ("RMConfig", "run_rm"),
    "config": ("TrainConfig",),
    "preference": ("ALL_LOSSES", "SHORTHANDS"),
    "loop": ("Objective", "TrainResult", "train"),
})
