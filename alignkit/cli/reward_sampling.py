"""The sampling-with-a-reward commands: `best-of-n`, `expert-iteration`, `rso`, `online-dpo`, `iterative-dpo`.

Each reads a YAML config and key=value overrides into its method's config dataclass (alignkit/reward_sampling)
and runs it; `--help` lists every config key with its default. They run as one process.
"""
from __future__ import annotations

import argparse

# command: (module under alignkit.reward_sampling, config class, run function, summary)
COMMANDS = {
    "best-of-n": ("best_of_n", "BestOfNConfig", "run_best_of_n",
                  "sample n answers per prompt, keep the one a reward scores best; reward and KL against n"),
    "expert-iteration": ("expert_iteration", "ExpertIterationConfig", "run_expert_iteration",
                         "rounds of sample, score, keep the best, SFT on them (rejection-sampling fine-tuning)"),
    "rso": ("rso", "RSOConfig", "run_rso",
            "statistical rejection sampling from the reward's optimal policy, then DPO or SLiC on its pairs"),
    "online-dpo": ("online_dpo", "OnlineDPOConfig", "run_online_dpo",
                   "DPO (or another pairwise loss) on pairs the policy samples and a reward ranks, every step"),
    "iterative-dpo": ("iterative_dpo", "IterativeDPOConfig", "run_iterative_dpo",
                      "rounds of sampling pairs from the current model, then DPO with a fresh reference"),
}


PACKAGE = "alignkit.reward_sampling"


def cmd_method(a) -> None:
    from alignkit.cli.config_commands import run_method

    run_method(PACKAGE, COMMANDS, a.command, a.config, a.overrides)


def add_reward_sampling(sub) -> None:
    from alignkit.cli.config_commands import add_config_arguments, keys_epilog

    for command, (_, _, _, summary) in COMMANDS.items():
        p = sub.add_parser(command, help=summary, epilog=keys_epilog(PACKAGE, COMMANDS, command),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add_config_arguments(p, f"configs/{command.replace('-', '_')}.yaml", "sampling.n=8")
        p.set_defaults(func=cmd_method)
