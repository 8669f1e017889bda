"""`alignkit data <command>`: build instruction and preference data (alignkit/construction).

Each command reads a YAML config and key=value overrides into its config dataclass and runs it; `--help`
lists every key with its default. Generating commands journal their results in output_dir, so a rerun
of a killed job goes on where it stopped.
"""
from __future__ import annotations

import argparse

# command: (module under alignkit.construction, config class, run function, summary)
COMMANDS = {
    "templates": ("templates", "TemplatesConfig", "run_templates",
                  "turn NLP datasets into instructions with templates (zero/few-shot, chain of thought, mixing, "
                  "held-out tasks)"),
    "self-instruct": ("self_instruct", "SelfInstructConfig", "run_self_instruct",
                      "bootstrap instructions from seed tasks, filter them (ROUGE-L, length, keywords, duplicates), "
                      "answer them"),
    "evolve": ("evolve", "EvolveConfig", "run_evolve",
               "evol-instruct: rewrite instructions in depth and in breadth, eliminate failed evolutions, answer"),
    "label": ("labels", "LabelConfig", "run_label",
              "AI preference labels: a judge compares responses in both orders; disagreements are dropped"),
    "critique": ("critique", "CritiqueConfig", "run_critique",
                 "constitutional critique and revision against principles: revised SFT data and pairs"),
    "contrast": ("contrast", "ContrastConfig", "run_contrast",
                 "contrastive prompts (RLCD): a positive and a negative prompt variant give chosen and rejected"),
    "dedup": ("quality", "DedupConfig", "run_dedup", "remove exact and near duplicates (MinHash LSH)"),
    "decontaminate": ("quality", "DecontaminateConfig", "run_decontaminate",
                      "remove records that share n-grams with evaluation sets"),
    "stats": ("quality", "StatsConfig", "run_stats", "length and language statistics of a data file"),
}


PACKAGE = "alignkit.construction"


def cmd_data(a) -> None:
    from alignkit.cli.config_commands import run_method

    result = run_method(PACKAGE, COMMANDS, a.data_command, a.config, a.overrides)
    print(f"alignkit data {a.data_command}: {result.output_dir}")
    print(result.counts.table())
    for name, rows in result.written.items():
        print(f"  wrote {rows} rows to {name}")


class _CommandParser(argparse.ArgumentParser):
    """A data command's parser: its config keys are listed in --help, read only when help is asked for, so
    running one command imports no other command's module."""

    def __init__(self, *args, data_command: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.data_command = data_command

    def format_help(self) -> str:
        if self.data_command and self.epilog is None:
            from alignkit.cli.config_commands import keys_epilog

            self.epilog = keys_epilog(PACKAGE, COMMANDS, self.data_command)
        return super().format_help()


def add_data(sub) -> None:
    from alignkit.cli.config_commands import add_config_arguments

    p = sub.add_parser("data", help="build instruction and preference data: templates, self-instruct, evolve, "
                                    "label, critique, contrast, dedup, decontaminate, stats", description=__doc__)
    commands = p.add_subparsers(dest="data_command", required=True, parser_class=_CommandParser)
    for command, (_, _, _, summary) in COMMANDS.items():
        q = commands.add_parser(command, help=summary, data_command=command,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        add_config_arguments(q, f"configs/data/{command.replace('-', '_')}.yaml", "output_dir=runs/x")
        q.set_defaults(func=cmd_data)
