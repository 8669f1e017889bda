"""Commands about the embedded model: `prepare` (convert it once) and `demo` (the pipeline on it)."""
from __future__ import annotations


def cmd_prepare(a) -> None:
    from alignkit.models.loading import embedded_model_dir

    print(embedded_model_dir())


def cmd_demo(a) -> None:
    from alignkit.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out_dir=a.out, sft_steps=a.sft_steps, dpo_steps=a.dpo_steps, grpo_steps=a.grpo_steps,
                        heldout_limit=a.heldout_limit, judge_pairs=a.judge_pairs))


def add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="convert the embedded model to safetensors in the cache (done once)")
    p.set_defaults(func=cmd_prepare)


def add_demo(sub) -> None:
    from alignkit.demo import DemoConfig

    defaults = DemoConfig()
    p = sub.add_parser("demo", help="the pipeline demo on the embedded model")
    p.add_argument("--out", default=defaults.out_dir)
    p.add_argument("--sft-steps", type=int, default=defaults.sft_steps)
    p.add_argument("--dpo-steps", type=int, default=defaults.dpo_steps)
    p.add_argument("--grpo-steps", type=int, default=defaults.grpo_steps, help="0 leaves the GRPO stage out")
    p.add_argument("--heldout-limit", type=int, default=0, help="answer only the first N held-out prompts (0: all)")
    p.add_argument("--judge-pairs", type=int, default=defaults.judge_pairs,
                   help="held-out prompts judged pairwise per stage")
    p.set_defaults(func=cmd_demo)
