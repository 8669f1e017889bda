"""Where the time goes on each speed-critical path: SFT and DPO training steps, the reference pass,
sampling. Runs the path on the embedded SmolLM2-135M with the bench data (bench/instruction_data.py),
then prints its tokens/s, the seconds per phase (forward with the loss, backward, optimizer; for
sampling prefill, decode forwards and the rest) and torch.profiler's top operators by self time.

    python bench/profile_paths.py sft --steps 4 --precision fp32
    python bench/profile_paths.py dpo --steps 4
    python bench/profile_paths.py reference --examples 64
    python bench/profile_paths.py sample --prompts 16 --n 4 --max-tokens 64
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from common import timed
from instruction_data import pref_rows, sft_rows


def write_jsonl(rows: list[dict]) -> str:
    path = os.path.join(tempfile.mkdtemp(), "data.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def profile_training(a, model, tok):
    from alignkit.data.readers import DataSpec
    from alignkit.training.config import TrainConfig
    from alignkit.training.loop import train

    if a.path == "sft":
        from alignkit.data.formats import load_conversations
        from alignkit.data.sft import build_sft_examples
        from alignkit.training.sft import SFTObjective

        conversations, _ = load_conversations(write_jsonl(sft_rows(a.steps * a.batch_size + a.batch_size)))
        examples, _ = build_sft_examples(conversations, tok, max_length=a.max_length)
        objective = SFTObjective()
    else:
        from alignkit.training.pref_run import PrefDataConfig, load_pref_data
        from alignkit.training.preference import PairwiseObjective, PrefLossConfig
        from alignkit.training.reference import attach_reference

        data = PrefDataConfig(train=[DataSpec(write_jsonl(pref_rows(a.steps * a.batch_size + a.batch_size)))],
                              max_length=a.max_length)
        examples, _, _ = load_pref_data(data, tok, seed=0)
        attach_reference(model, examples, model_id="embedded", template=tok.chat_template or "",
                         max_length=a.max_length, cache_dir=tempfile.mkdtemp(), precision=a.precision)
        objective = PairwiseObjective(PrefLossConfig(loss="dpo", beta=0.1))
    cfg = TrainConfig(output_dir=tempfile.mkdtemp(), max_steps=a.steps + 1, batch_size=a.batch_size, lr=1e-6,
                      schedule="constant", precision=a.precision, resume="none", progress=False, shuffle=False)
    patches = [(type(objective), "loss", "forward + loss"), (torch.Tensor, "backward", "backward"),
               (torch.optim.AdamW, "step", "optimizer")]
    first = {}

    def on_step(step, record):  # the first step warms up; the rest are timed
        if step == 1:
            first.update(time=time.perf_counter(), seconds=dict(seconds), tokens=record["tokens"])
    from torch.profiler import ProfilerActivity, profile

    with timed(patches) as (seconds, _), profile(activities=[ProfilerActivity.CPU]) as prof:
        result = train(model, objective, examples, cfg, on_step=on_step)
    wall = time.perf_counter() - first["time"]
    tokens = result.tokens - first["tokens"]
    phases = {k: v - first["seconds"].get(k, 0.0) for k, v in seconds.items()}
    return wall, tokens, phases, prof


def profile_reference(a, model, tok):
    from alignkit.data.readers import DataSpec
    from alignkit.training.pref_run import PrefDataConfig, load_pref_data
    from alignkit.training.reference import compute_logps

    data = PrefDataConfig(train=[DataSpec(write_jsonl(pref_rows(a.examples)))], max_length=a.max_length)
    examples, _, _ = load_pref_data(data, tok, seed=0)
    compute_logps(model, examples[:4], batch_size=a.batch_size, precision=a.precision)  # warm-up
    from torch.profiler import ProfilerActivity, profile

    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        compute_logps(model, examples, batch_size=a.batch_size, precision=a.precision)
    wall = time.perf_counter() - start
    return wall, sum(len(ids) for ex in examples for ids, _ in ex.sequences), {}, prof


def profile_sampling(a, model, tok):
    from alignkit.generation.backend import SamplingParams
    from alignkit.generation.local import LocalBackend

    if a.precision == "bf16":
        for param in model.parameters():
            param.data = param.data.to(torch.bfloat16)
    backend = LocalBackend(model, tok, batch_size=a.batch_size)
    prompts = [r["messages"][:1] for r in sft_rows(a.prompts)]
    params = SamplingParams(max_tokens=a.max_tokens, temperature=1.0, n=a.n, seed=0, return_tokens=True)
    backend.chat(prompts[:2], SamplingParams(max_tokens=4, temperature=1.0, n=2, seed=0))  # warm-up
    from torch.profiler import ProfilerActivity, profile

    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        results = backend.chat(prompts, params)
    wall = time.perf_counter() - start
    return wall, sum(c.completion_tokens for r in results for c in r), {}, prof


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", choices=["sft", "dpo", "reference", "sample"])
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--steps", type=int, default=4, help="sft, dpo: timed steps (after one warm-up step)")
    p.add_argument("--batch-size", type=int, default=4, help="examples per step, per reference forward, or rows "
                                                              "per sampling batch")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--examples", type=int, default=64, help="reference: pairs")
    p.add_argument("--prompts", type=int, default=16, help="sample: prompts")
    p.add_argument("--n", type=int, default=4, help="sample: samples per prompt")
    p.add_argument("--max-tokens", type=int, default=64, help="sample: new tokens")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--top", type=int, default=15, help="operators to list")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from alignkit.models.loading import load_model

    model, tok = load_model("embedded")
    run = {"sft": profile_training, "dpo": profile_training, "reference": profile_reference,
           "sample": profile_sampling}[a.path]
    wall, tokens, phases, prof = run(a, model, tok)
    print(f"\n{a.path}, {a.precision}, {a.threads} threads: {tokens} tokens in {wall:.2f} s = {tokens / wall:.1f} tok/s")
    for name, seconds in phases.items():
        print(f"  {name:<16}{seconds:8.2f} s {seconds / wall:6.1%}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.top))


if __name__ == "__main__":
    main()
