"""Expert iteration (rejection-sampling fine-tuning): rounds of sample -> score -> keep the best -> SFT.

Each round samples `sampling.n` answers per prompt from the current model, scores them with the reward,
keeps some of them by `selection` (selection.py: the best per prompt, every one above a threshold, or the
k best) and fine-tunes on the kept answers with the project's SFT run. This is RAFT (Dong et al. 2023),
the rejection-sampling stage of Llama 2 (Touvron et al. 2023) and ReST-EM (Singh et al. 2023); they differ
in the keep rule and in the model each round trains:

- from_previous: true: each round fine-tunes the model the previous round produced, on the samples this
  round kept (the samples improve with the model, and so does the next round's starting point).
- from_previous: false: each round fine-tunes the starting model again, on every sample kept so far
  (rounds 1..k). Restarting from the base model each iteration is ReST-EM's guard against overfitting
  over rounds; keeping the earlier rounds' samples means no round's data is lost. The samples still come
  from the previous round's model.

Only the sampled answer is learnt (train_on last_assistant): the prompt's own turns are context. A round
that keeps nothing does not train: the log says so, the round's model is the one it started from, and
its held-out record is that model's. round_k/selected.jsonl holds the kept answers as SFT-ready
`messages` records (with their reward, sample index and prompt source), beside round_k/samples.jsonl
with every sample. The round loop, output folder and resuming are rounds.py's.
"""
from __future__ import annotations

import dataclasses
import os
from collections import Counter
from dataclasses import dataclass, field

from alignkit.config import require, require_choice, require_number
from alignkit.data.readers import DataSpec
from alignkit.reward_sampling.rounds import (RoundsConfig, RoundState, adopt_finished_training, check_round_train,
                                             mean_or_none, run_rounds)
from alignkit.reward_sampling.selection import SELECTION_RULES, select_samples
from alignkit.training.config import TrainConfig

SELECTED = "selected.jsonl"


@dataclass
class SelectionConfig:
    rule: str = "best"  # best: one per prompt | threshold: every sample with reward >= threshold | top_k: the k best per prompt
    threshold: float = 0.0  # rule=threshold: the lowest reward kept
    k: int = 1  # rule=top_k: samples kept per prompt
    min_reward: float | None = None  # any rule: never keep a sample below this (the best of bad answers is still bad); empty: no floor
    keep_truncated: bool = False  # keep samples cut at sampling.max_tokens (SFT on them teaches stopping mid-answer)
    distinct: bool = True  # identical answers to one prompt count once

    def validate(self, where: str = "selection") -> None:
        require_choice(where, "rule", self.rule, SELECTION_RULES)
        require_number(where, "threshold", self.threshold, low=-float("inf"))
        require_number(where, "k", self.k, low=1, whole=True)
        if self.min_reward is not None:
            require_number(where, "min_reward", self.min_reward, low=-float("inf"))
        require(self.threshold == 0 or self.rule == "threshold", where, "threshold", "0 unless rule is threshold",
                self.threshold)
        require(self.k == 1 or self.rule == "top_k", where, "k", "1 unless rule is top_k", self.k)


@dataclass
class ExpertIterationConfig(RoundsConfig):
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    sft: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-5))  # each round's SFT run (in round_k/sft)
    from_previous: bool = True  # true: each round trains the previous round's model on its own samples | false: each round trains the starting model on all samples kept so far
    output_dir: str = "runs/expert_iteration"  # round_k folders, rounds.jsonl and report.json (see rounds.py)

    def validate(self, where: str = "") -> None:
        super().validate(where)
        check_round_train(self.sft, "sft")


def selected_rows(scored: list, cfg: SelectionConfig) -> tuple[list[dict], Counter, int]:
    """(SFT records of the kept samples, unusable samples by reason, prompts with at least one kept)."""
    rows, dropped, prompts_kept = [], Counter(), 0
    for item in scored:
        kept = select_samples(item.samples, cfg.rule, threshold=cfg.threshold, k=cfg.k, min_reward=cfg.min_reward,
                              keep_truncated=cfg.keep_truncated, distinct=cfg.distinct)
        dropped.update(kept.dropped)
        prompts_kept += bool(kept.indices)
        for index in kept.indices:
            sample = item.samples[index]
            rows.append({"messages": item.prompt.messages + [{"role": "assistant", "content": sample.text}],
                         "reward": sample.reward, "sample": index, "source": item.prompt.metadata.get("source", "")})
    return rows, dropped, prompts_kept


def _train_files(cfg: ExpertIterationConfig, k: int) -> list[str]:
    """This round's kept samples, or with from_previous=false every round's so far (those that kept any)."""
    rounds = [k] if cfg.from_previous else range(1, k + 1)
    paths = [os.path.join(cfg.output_dir, f"round_{j}", SELECTED) for j in rounds]
    return [path for path in paths if os.path.getsize(path) > 0]


def _count_lines(paths: list[str]) -> int:
    total = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            total += sum(1 for line in f if line.strip())
    return total


def _sft(cfg: ExpertIterationConfig, state: RoundState, k: int, files: list[str], folder: str) -> int:
    """Train the current model in place on `files` (from the starting weights with from_previous=false);
    returns the optimizer steps. A training that finished before the run stopped is loaded, not repeated."""
    from alignkit.training.sft import SFTConfig, SFTDataConfig, run_sft

    run_dir = os.path.join(folder, "sft")
    final = os.path.join(run_dir, "final")
    done = adopt_finished_training(state, k, run_dir)
    if done is not None:
        return done
    start = state.model_path
    if not cfg.from_previous:
        start = cfg.model.name
        state.current().load_state_dict(state.initial_model().state_dict())
    sft_cfg = SFTConfig(model=dataclasses.replace(cfg.model, name=start),
                        # last_assistant: a prompt's earlier assistant turns are context; only the answer is learnt.
                        data=SFTDataConfig(train=[DataSpec(path) for path in files], max_length=cfg.max_length,
                                           train_on="last_assistant"),
                        train=dataclasses.replace(cfg.sft, output_dir=run_dir))
    result = run_sft(sft_cfg, model=state.current(), tokenizer=state.tokenizer)
    state.adopt(final, load=False)
    return result.steps


def expert_round(cfg: ExpertIterationConfig):
    def train_round(state: RoundState, k: int, scored: list, folder: str) -> dict:
        from alignkit.atomic_write import write_jsonl_atomic

        if not cfg.from_previous:
            state.initial_model()  # kept before the first training changes the model in place
        rows, dropped, prompts_kept = selected_rows(scored, cfg.selection)
        write_jsonl_atomic(os.path.join(folder, SELECTED), rows)
        total = sum(len(item.samples) for item in scored)
        fields = {"kept": len(rows), "kept_share": len(rows) / total, "prompts_kept": prompts_kept,
                  "kept_reward_mean": mean_or_none([row["reward"] for row in rows]), "dropped": dict(dropped)}
        kept = f"kept {len(rows)}/{total} samples ({len(rows) / total:.1%}) of {prompts_kept}/{len(scored)} prompts"
        if not rows:
            print(f"round {k}: kept no sample ({dict(dropped) or 'none passed the rule'}): no training this round, "
                  f"the model stays {state.model_path}", flush=True)
            return {**fields, "trained": False, "train_examples": 0, "train_steps": 0,
                    "summary": f"{kept}, no training"}
        files = _train_files(cfg, k)
        examples = _count_lines(files)
        steps = _sft(cfg, state, k, files, folder)
        trained = f"mean reward {fields['kept_reward_mean']:.3f}; SFT {steps} steps on {examples} examples"
        return {**fields, "trained": True, "train_examples": examples, "train_steps": steps,
                "summary": f"{kept}, {trained}"}
    return train_round


def run_expert_iteration(cfg: ExpertIterationConfig) -> dict:
    """Round 0 (the starting model on the held-out prompts), then cfg.rounds rounds; returns the report."""
    return run_rounds(cfg, method="expert iteration", train_round=expert_round(cfg))
