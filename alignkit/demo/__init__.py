"""The pipeline demo on the embedded model (`alignkit demo`): SFT, DPO, then evaluation on held-out prompts.

    results = run_demo(DemoConfig(out_dir="runs/demo", sft_steps=120, dpo_steps=30))

`run` trains and answers, `evaluation_stage` scores, judges and writes the report, `heldout` holds
the check both of them score with, and `data/` the instruction and preference files (with the
scripts that build them).
"""
from alignkit.demo.run import DemoConfig, run_demo

__all__ = ["DemoConfig", "run_demo"]
