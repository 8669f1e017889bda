"""Iterative DPO: rounds of sampling pairs from the current model, ranking them by a reward, and training
on them with DPO (or any pairwise loss alignkit has) against a fresh reference.

Each round samples `sampling.n` (>= 2) answers per prompt from the current model, scores them, and turns
each prompt's usable samples into pairs by `pair_rule` (selection.pair_samples on
`data.preference.ranking_to_pairs`; best_vs_worst by default, as in Xiong et al. 2024): a tie gives no
pair, so a prompt whose samples all score alike teaches nothing, and is counted. The pairs go to
round_k/pairs.jsonl in TRL's prompt/chosen/rejected layout with both rewards (score_chosen >
score_rejected), and `alignkit pref`'s run trains on them (round_k/pref, final model in round_k/pref/final)
starting from the current model.

`reference` says which model the loss pulls towards:
- previous (default): the model the round starts from, so each round is one DPO step away from the last
  (the "fresh reference" of iterative DPO; Xu et al. 2023, Yuan et al. 2024);
- initial: always the starting model, so every round stays near it.
From round 2 on, `initial` needs the starting model beside the policy: a frozen copy kept from round 1 (or
loaded on a resumed run) is passed to run_pref as its `reference_model`. How the reference's log-probs are
computed (once before training, or every step) is the pref section's own `reference` (precomputed | live).

`prompts_per_round` > 0 gives each round a different seeded slice of the prompts (rounds.py). The round
loop, output folder and resuming are rounds.py's.
"""
from __future__ import annotations

import dataclasses
import os
from collections import Counter
from dataclasses import dataclass, field

from alignkit.config import require, require_choice, require_number
from alignkit.data.preference import PAIR_RULES
from alignkit.data.readers import DataSpec
from alignkit.reward_sampling.rounds import (RoundsConfig, RoundState, adopt_finished_training, check_round_train,
                                             run_rounds)
from alignkit.reward_sampling.selection import pair_samples
from alignkit.training.config import TrainConfig
from alignkit.training.preference import PAIR_LOSSES, PrefLossConfig

PAIRS = "pairs.jsonl"
REFERENCES = ("previous", "initial")


@dataclass
class PrefRoundConfig(PrefLossConfig):
    """The pairwise loss and its settings (as in `alignkit pref`), and each round's training run."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-6))  # each round's run (in round_k/pref)

    def loss_settings(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(PrefLossConfig)}

    def validate(self, where: str = "pref") -> None:
        require_choice(where, "loss", self.loss, PAIR_LOSSES)
        self.validate_loss(where)  # the checks `alignkit pref` makes
        check_round_train(self.train, f"{where}.train")


@dataclass
class IterativeDPOConfig(RoundsConfig):
    pair_rule: str = "best_vs_worst"  # all_pairs | best_vs_rest | best_vs_worst | margin (data.preference.ranking_to_pairs)
    pair_threshold: float = 0.0  # pair_rule=margin: keep pairs whose reward difference is above this
    keep_truncated: bool = False  # pair samples cut at sampling.max_tokens too (training appends the end of turn to them)
    reference: str = "previous"  # previous: the model each round starts from (fresh each round) | initial: always the starting model
    pref: PrefRoundConfig = field(default_factory=PrefRoundConfig)  # loss (dpo, ipo, ...), beta, reference log-probs (pref.reference: precomputed | live), train
    output_dir: str = "runs/iterative_dpo"  # round_k folders, rounds.jsonl and report.json (see rounds.py)

    def validate(self, where: str = "") -> None:
        super().validate(where)
        require_number("sampling", "n", self.sampling.n, low=2, whole=True)  # a pair needs two samples
        require_choice(where, "pair_rule", self.pair_rule, PAIR_RULES)
        require_number(where, "pair_threshold", self.pair_threshold, low=0)
        require(not self.pair_threshold or self.pair_rule == "margin", where, "pair_threshold",
                "0 unless pair_rule is margin", self.pair_threshold)
        require_choice(where, "reference", self.reference, REFERENCES)

    @property
    def separate_reference(self) -> bool:
        """Whether rounds after the first need a reference model apart from the policy."""
        return self.reference == "initial" and self.rounds > 1 and self.pref.needs_reference


def pair_rows(scored: list, cfg: IterativeDPOConfig) -> tuple[list[dict], Counter, Counter]:
    """(pair records, prompts by outcome (paired, tied, too_few, below_margin), unusable samples by reason)."""
    rows, outcomes, dropped = [], Counter(), Counter()
    for item in scored:
        result = pair_samples(item.samples, cfg.pair_rule, threshold=cfg.pair_threshold,
                              keep_truncated=cfg.keep_truncated)
        outcomes[result.outcome] += 1
        dropped.update(result.dropped)
        for chosen, rejected in result.pairs:
            better, worse = item.samples[chosen], item.samples[rejected]
            rows.append({"prompt": item.prompt.messages,
                         "chosen": [{"role": "assistant", "content": better.text}],
                         "rejected": [{"role": "assistant", "content": worse.text}],
                         "score_chosen": better.reward, "score_rejected": worse.reward,
                         "chosen_sample": chosen, "rejected_sample": rejected,
                         "source": item.prompt.metadata.get("source", "")})
    return rows, outcomes, dropped


def _pref(cfg: IterativeDPOConfig, state: RoundState, k: int, pairs_path: str, folder: str) -> int:
    """Train the current model in place on the round's pairs; returns the optimizer steps. A training that
    finished before the run stopped is loaded, not repeated."""
    from alignkit.training.pref_run import PrefConfig, PrefDataConfig, run_pref

    run_dir = os.path.join(folder, "pref")
    final = os.path.join(run_dir, "final")
    done = adopt_finished_training(state, k, run_dir)
    if done is not None:
        return done
    pref_cfg = PrefConfig(**cfg.pref.loss_settings(), model=dataclasses.replace(cfg.model, name=state.model_path),
                          data=PrefDataConfig(train=[DataSpec(pairs_path)], max_length=cfg.max_length),
                          train=dataclasses.replace(cfg.pref.train, output_dir=run_dir))
    reference = None
    if cfg.separate_reference:
        reference = state.initial_model()  # at round 1 a copy of the policy, taken before it trains
    result = run_pref(pref_cfg, model=state.current(), tokenizer=state.tokenizer,
                      reference_model=reference if k > 1 else None)
    state.adopt(final, load=False)
    return result.steps


def dpo_round(cfg: IterativeDPOConfig):
    def train_round(state: RoundState, k: int, scored: list, folder: str) -> dict:
        from alignkit.atomic_write import write_jsonl_atomic

        rows, outcomes, dropped = pair_rows(scored, cfg)
        path = os.path.join(folder, PAIRS)
        write_jsonl_atomic(path, rows)
        fields = {"pairs": len(rows), "prompts_paired": outcomes["paired"], "prompts_tied": outcomes["tied"],
                  "prompts_too_few": outcomes["too_few"], "prompts_below_margin": outcomes["below_margin"],
                  "dropped": dict(dropped)}
        made = (f"{len(rows)} pairs from {outcomes['paired']}/{len(scored)} prompts ({outcomes['tied']} tied, "
                f"{outcomes['too_few']} with < 2 usable samples)")
        if not rows:
            print(f"round {k}: no pair ({dict(outcomes)}): no training this round, the model stays "
                  f"{state.model_path}", flush=True)
            return {**fields, "trained": False, "train_steps": 0, "summary": f"{made}, no training"}
        steps = _pref(cfg, state, k, path, folder)
        against = "the starting model" if cfg.reference == "initial" else "the model the round started from"
        return {**fields, "trained": True, "train_steps": steps,
                "summary": f"{made}; {cfg.pref.loss} {steps} steps against {against}"}
    return train_round


def run_iterative_dpo(cfg: IterativeDPOConfig) -> dict:
    """Round 0 (the starting model on the held-out prompts), then cfg.rounds rounds; returns the report."""
    return run_rounds(cfg, method="iterative DPO", train_round=dpo_round(cfg))
