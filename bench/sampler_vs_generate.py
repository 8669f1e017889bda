"""Sampling speed: alignkit's LocalBackend against a plain transformers `model.generate` loop, then
where LocalBackend's time goes.

Both sample the same demo format-task prompts from the same SmolLM2-135M weights in bf16 (what a
GRPO rollout samples from under precision=bf16), at temperature 1 with no top-k / top-p, `--n`
samples per prompt, `--batch-size` rows per generate call. The plain loop is what one would write
by hand: chat template, left padding, `generate(do_sample=True)`, batch_decode. LocalBackend runs
with the rollout's settings (per-row seeds, token ids and their log-probs returned). With
`--until full` (the default) every row runs to `--max-tokens` (EOS masked by min_new_tokens), so
every sampler does exactly the same work; with `--until eos` rows stop at EOS and each counts its
own tokens. All run in this process on one model, call after call, `--repeats` times each after a
warm-up call; the median is reported.

The profile times one LocalBackend call by wrapping its parts: prompt tokenisation, the model's
prefill and decode forwards, each logits hook (_LogprobRecorder, temperature and the other warpers,
_SeededSampler, _EndTracker), the log-prob collection after generate and the conversion to
Completions (decoding, stop strings); each part counts its own time only. "generate loop" is what
generate spends outside the forwards and hooks (cache, inputs, bookkeeping); "prompt cache copies"
what sharing a prompt's cache among its n samples costs besides its forward. `--baseline REV` also
times alignkit/generation/local.py as it was at a git revision, for a before/after.
`--torch-profile` adds torch.profiler's top operators.

    python bench/sampler_vs_generate.py --prompts 4 --n 4 --batch-size 16 --max-tokens 64 --repeats 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from common import ROOT, format_prompts, run_to_max_tokens, save_results, timed


def plain_generate(model, tok, prompts: list[dict], a, seed: int) -> tuple[int, float]:
    """(completion tokens, seconds) of a hand-written batched sampling loop."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    texts = [tok.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True) for p in prompts]
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts for _ in range(a.n)]
    tokens = 0
    for first in range(0, len(rows), a.batch_size):
        batch = tok.pad({"input_ids": rows[first:first + a.batch_size]}, padding_side="left", return_tensors="pt")
        out = model.generate(**batch, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             max_new_tokens=a.max_tokens, pad_token_id=tok.pad_token_id)
        new = out[:, batch["input_ids"].shape[1]:]
        tok.batch_decode(new, skip_special_tokens=True)
        tokens += int(_lengths(new, tok.eos_token_id).sum())
    return tokens, time.perf_counter() - start


def greedy_check(model, tok, backend, prompts: list[dict], a) -> dict:
    """Greedy decoding through the plain loop and through LocalBackend, row by row: the token ids each
    produced up to and including its first EOS (`--max-tokens` at most), and how many prompts differ."""
    from alignkit.generation.backend import SamplingParams

    texts = [tok.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True) for p in prompts]
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    plain = []
    for first in range(0, len(rows), a.batch_size):
        batch = tok.pad({"input_ids": rows[first:first + a.batch_size]}, padding_side="left", return_tensors="pt")
        out = model.generate(**batch, do_sample=False, max_new_tokens=a.max_tokens, pad_token_id=tok.pad_token_id,
                             min_new_tokens=0)
        new = out[:, batch["input_ids"].shape[1]:]
        plain += [r[:n] for r, n in zip(new.tolist(), _lengths(new, tok.eos_token_id).tolist())]
    params = SamplingParams(max_tokens=a.max_tokens, temperature=0.0, return_tokens=True)
    ours = [r[0].token_ids for r in backend.chat([p["messages"] for p in prompts], params)]
    differ = [i for i, (x, y) in enumerate(zip(plain, ours)) if x != y]
    return {"prompts": len(prompts), "differ": len(differ), "first_differing": differ[:5]}


def _lengths(new: torch.Tensor, eos: int) -> torch.Tensor:
    """Tokens per row up to and including its first EOS (what follows is padding)."""
    is_eos = new == eos
    return torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, new.shape[1])


def alignkit_sample(backend, prompts: list[dict], a, seed: int) -> tuple[int, float]:
    """(completion tokens, seconds) of one LocalBackend call with a GRPO rollout's settings."""
    from alignkit.generation.backend import SamplingParams

    params = SamplingParams(max_tokens=a.max_tokens, temperature=1.0, n=a.n, seed=seed, return_tokens=True)
    start = time.perf_counter()
    results = backend.chat([p["messages"] for p in prompts], params)
    return sum(c.completion_tokens for r in results for c in r), time.perf_counter() - start


# ----- time accounting -----

def _forward_kind(*args, **kwargs) -> str:
    ids = kwargs.get("input_ids", args[0] if args else None)
    return "decode forwards" if ids is not None and ids.shape[1] == 1 else "prefill forward"


HOOKS = ("_LogprobRecorder.__call__", "_SeededSampler.__call__", "_EndTracker.__call__")


def profile_backend(backend, module, prompts: list[dict], a) -> dict:
    """Seconds and calls per part of one call of `backend` (a LocalBackend of `module`, see the
    module docstring)."""
    from transformers.generation import logits_process

    warpers = [(getattr(logits_process, n), "__call__", "warpers")
               for n in ("TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper")]
    hooks = [(getattr(module, n.split(".")[0]), "__call__", n) for n in HOOKS]
    patches = [(backend, "_chat_ids", "tokenisation"), (backend.model, "forward", _forward_kind),
               (backend.model, "generate", "generate loop"), *hooks, *warpers,
               (module._LogprobRecorder, "per_row", "log-prob collection"),
               (backend, "_to_completion", "to Completion (decode, stops)")]
    if hasattr(module.LocalBackend, "_shared_prompt_cache"):
        patches.append((backend, "_shared_prompt_cache", "prompt cache copies"))
    with timed(patches) as (seconds, calls):
        tokens, total = alignkit_sample(backend, prompts, a, seed=1)
    parts = dict(seconds)
    parts["other"] = total - sum(parts.values())
    return {"tokens": tokens, "seconds": total, "parts": parts, "calls": dict(calls)}


def torch_profile(backend, prompts: list[dict], a) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        alignkit_sample(backend, prompts, a, seed=2)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)


# ----- the comparison -----

def local_module_at(rev: str):
    """alignkit/generation/local.py as it was at git revision `rev`, loaded as a module of its own."""
    import importlib.util
    import subprocess
    import sys
    import tempfile

    source = subprocess.run(["git", "show", f"{rev}:alignkit/generation/local.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = os.path.join(tempfile.mkdtemp(), "local_at_rev.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(f"local_at_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def measure(a) -> dict:
    from alignkit.generation import local
    from alignkit.models.loading import load_model

    torch.set_num_threads(a.threads)
    model, tok = load_model("embedded")
    if a.precision == "bf16":  # as the training loop holds it under bf16: buffers stay fp32
        for param in model.parameters():
            param.data = param.data.to(torch.bfloat16)
    model.eval()
    prompts = format_prompts(a.prompts)
    modules = {"alignkit": local}
    if a.baseline:
        modules[f"alignkit@{a.baseline}"] = local_module_at(a.baseline)
    backends = {name: (m.LocalBackend(model, tok, batch_size=a.batch_size), m) for name, m in modules.items()}
    greedy = greedy_check(model, tok, backends["alignkit"][0], prompts, a) if a.greedy_check else None
    if a.until == "full":
        run_to_max_tokens(model)  # for every sampler: they share the model
    samplers = {"generate": lambda seed: plain_generate(model, tok, prompts, a, seed)}
    for name, (backend, _) in backends.items():
        samplers[name] = lambda seed, backend=backend: alignkit_sample(backend, prompts, a, seed)
    runs: dict[str, list[tuple[int, float]]] = {name: [] for name in samplers}
    with torch.inference_mode():
        for sample in samplers.values():
            sample(0)  # warm-up: first-call allocations and lazy initialisation
        # Alternating, call after call, spreads background load evenly over all of them.
        for seed in range(1, a.repeats + 1):
            for name, sample in samplers.items():
                runs[name].append(sample(seed))
        result = {"speed": {name: _summary(rs) for name, rs in runs.items()}, "greedy": greedy}
        if a.profile:
            result["profile"] = {name: profile_backend(b, m, prompts, a) for name, (b, m) in backends.items()}
        if a.torch_profile:
            result["torch_profile"] = torch_profile(backends["alignkit"][0], prompts, a)
    return result


def _summary(runs: list[tuple[int, float]]) -> dict:
    speeds = [tokens / seconds for tokens, seconds in runs]
    return {"tokens_per_s": statistics.median(speeds), "all_tokens_per_s": [round(s, 1) for s in speeds],
            "tokens": [tokens for tokens, _ in runs], "seconds": [round(s, 4) for _, s in runs]}


def report(result: dict, a) -> None:
    speed = result["speed"]
    print(f"\nSampling, SmolLM2-135M {a.precision}, {a.prompts} prompts x n {a.n}, batch {a.batch_size}, "
          f"{a.max_tokens} tokens ({a.until}), {a.threads} threads, median of {a.repeats}")
    print(f"{'':<24}{'tokens/s':>10}{'vs generate':>13}  per run")
    for name, r in speed.items():
        ratio = r["tokens_per_s"] / speed["generate"]["tokens_per_s"]
        print(f"{name:<24}{r['tokens_per_s']:>10.1f}{ratio:>12.2f}x  {r['all_tokens_per_s']}")
    if result.get("greedy"):
        g = result["greedy"]
        print(f"greedy outputs: {g['prompts'] - g['differ']} of {g['prompts']} prompts identical token for token"
              + (f" (differing: {g['first_differing']})" if g["differ"] else ""))
    if a.baseline:
        print(f"alignkit / alignkit@{a.baseline}: "
              f"{speed['alignkit']['tokens_per_s'] / speed[f'alignkit@{a.baseline}']['tokens_per_s']:.2f}x")
    for name, p in result.get("profile", {}).items():
        print(f"\nwhere one {name} call's {p['seconds'] * 1000:.0f} ms go ({p['tokens']} tokens):")
        for part, seconds in sorted(p["parts"].items(), key=lambda kv: -kv[1]):
            calls = p["calls"].get(part)
            each = f"{seconds / calls * 1000:8.2f} ms x {calls}" if calls else ""
            print(f"  {part:<32}{seconds * 1000:9.1f} ms {seconds / p['seconds']:6.1%}  {each}")
    if "torch_profile" in result:
        print("\n" + result["torch_profile"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=4, help="demo format-task prompts")
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    p.add_argument("--batch-size", type=int, default=16, help="rows per generate call")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--until", choices=["full", "eos"], default="full",
                   help="run every row to max-tokens, or stop at EOS")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--no-profile", dest="profile", action="store_false", help="skip the time accounting")
    p.add_argument("--baseline", metavar="REV", help="also time alignkit/generation/local.py as of this git revision")
    p.add_argument("--torch-profile", action="store_true", help="also print torch.profiler's top operators")
    p.add_argument("--no-greedy-check", dest="greedy_check", action="store_false",
                   help="skip comparing greedy outputs of the two")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="the model's weights")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    result = measure(a)
    report(result, a)
    save_results(a.json, {"settings": vars(a), **result})


if __name__ == "__main__":
    main()
