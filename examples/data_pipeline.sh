#!/usr/bin/env bash
# Build data with models and templates, train on it, measure: the end-to-end example of README.md's
# "Building data" section, on the embedded SmolLM2-135M-Instruct (about 15 minutes on 2 cores).
#
#   templated NLP tasks (sentiment held out) + self-instruct  ->  dedup, decontaminate  ->  SFT
#   two samples per prompt from the SFT model, labelled by a judge in both orders      ->  DPO
#   held-out: exact-match accuracy on the unseen task (sentiment) for the base, SFT and DPO models
#
# Every data step prints what it kept and dropped and why (also in each folder's summary.json). Rerun the
# script after a kill and each data job goes on where it stopped. OUT moves the outputs; ALIGNKIT the command.
set -euo pipefail
OUT=${OUT:-runs/data_example}
AK=${ALIGNKIT:-.venv/bin/alignkit}
PY=${PYTHON:-.venv/bin/python}
SFT_STEPS=${SFT_STEPS:-30}
DPO_STEPS=${DPO_STEPS:-10}

step() { echo; echo "== $* =="; }

step "templated tasks: NLI, QA, summarisation, paraphrase for training; sentiment held out"
$AK data templates --config configs/data/templates.yaml output_dir=$OUT/templates

step "self-instruct: the embedded model proposes instructions from 26 seed tasks and answers them"
$AK data self-instruct --config configs/data/self_instruct.yaml output_dir=$OUT/self_instruct \
    generator.max_tokens=160 progress=false

step "exact and near duplicates out of the mix"
$AK data dedup --config configs/data/dedup.yaml output_dir=$OUT/dedup \
    "data=[$OUT/templates/train.jsonl, $OUT/self_instruct/sft.jsonl]" progress=false

step "decontamination against the evaluation sets in ../shared/data"
$AK data decontaminate --config configs/data/decontaminate.yaml output_dir=$OUT/sft_data \
    "data=[$OUT/dedup/data.jsonl]" progress=false

step "SFT on the built data"
$AK sft --config configs/sft.yaml "data.train=[$OUT/sft_data/data.jsonl]" data.max_length=512 \
    train.output_dir=$OUT/sft train.max_steps=$SFT_STEPS train.eval_every=0 train.save_every=0 train.progress=false

step "AI preference labels: two samples per prompt from the SFT model, judged in both orders"
$AK data label --config configs/data/label.yaml output_dir=$OUT/label prompts=configs/data/prompts.jsonl \
    max_prompts=0 generator.model=$OUT/sft/final judge.model=embedded use_logprobs=true judge.max_tokens=4 \
    progress=false

step "DPO on the labelled pairs"
$AK dpo --config configs/dpo.yaml model.name=$OUT/sft/final "data.train=[$OUT/label/pairs.jsonl]" "data.eval=[]" \
    data.max_length=384 train.output_dir=$OUT/dpo train.max_steps=$DPO_STEPS train.batch_size=4 \
    train.eval_every=0 train.save_every=0 train.progress=false

step "held-out task (sentiment, never trained on): exact-match accuracy"
for name in base sft dpo; do
  case $name in base) model=embedded ;; *) model=$OUT/$name/final ;; esac
  $AK generate --model $model --prompts $OUT/templates/heldout.jsonl --out $OUT/heldout/$name.jsonl --max-tokens 8
  $AK score --rewards configs/data/exact.yaml --input $OUT/heldout/$name.jsonl --out $OUT/heldout/$name.scored.jsonl
done
$PY - "$OUT" <<'PYTHON'
import json, sys
from alignkit.rewards.verifiable import normalize_answer  # what the exact reward compares: case and spacing aside
out = sys.argv[1]
print(f"{'model':<6} {'accuracy':>9} {'answered with an offered option':>32}")
for name in ("base", "sft", "dpo"):
    rows = [json.loads(line) for line in open(f"{out}/heldout/{name}.scored.jsonl")]
    offered = [normalize_answer(row["response"]) in row["options"] for row in rows]
    print(f"{name:<6} {sum(r['reward'] for r in rows) / len(rows):>9.3f} {sum(offered) / len(rows):>32.3f}"
          f"   ({len(rows)} prompts)")
PYTHON
