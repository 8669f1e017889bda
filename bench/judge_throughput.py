"""Judge throughput through the OpenAI-compatible server: one request at a time vs several in flight.

    .venv/bin/python bench/judge_throughput.py --pairs 12 --max-tokens 16

Serves a local model (the embedded one by default) with `create_app` on a local port, then judges
the first N LLMBar pairs in both orders (plain strategy) through `OpenAIBackend`, three times:

1. one request at a time (max_concurrency=1), no cache;
2. `--concurrency` requests in flight, which the server's batcher merges into shared forward
   passes, through a fresh SQLite cache (cold: every prompt is a new call);
3. the same again with the now warm cache: it must make zero new calls and send no HTTP request.

Prints a table and writes it as JSON. The server-side counts come from a wrapper around the served
backend, so "prompts per backend call" shows how much the batcher actually merged.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_PAIRS = Path(__file__).resolve().parents[2] / "shared" / "data" / "llmbar" / "natural.json"


class CountingBackend:
    """The served backend, counting the calls the batcher makes and the prompts in them."""

    def __init__(self, inner):
        self.inner = inner
        self.model_id = inner.model_id
        self.calls = 0
        self.prompts = 0
        self._lock = threading.Lock()

    def _count(self, n: int) -> None:
        with self._lock:
            self.calls += 1
            self.prompts += n

    def chat(self, conversations, params):
        self._count(len(conversations))
        return self.inner.chat(conversations, params)

    def complete(self, prompts, params):
        self._count(len(prompts))
        return self.inner.complete(prompts, params)


@dataclass
class Row:
    run: str
    concurrency: int
    judgments: int
    seconds: float
    judgments_per_s: float
    http_requests: int
    server_backend_calls: int
    prompts_per_backend_call: float | None
    new_calls: int | None  # prompts that missed the cache (None: no cache)
    cache_hits: int | None
    failed_judgments: int


def _judge(judge_backend, items, config):
    from alignkit.judges import judge_pairs

    started = time.perf_counter()
    judged = judge_pairs(judge_backend, items, config)
    return judged, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--pairs-file", default=str(DEFAULT_PAIRS), help="LLMBar JSON file")
    parser.add_argument("--pairs", type=int, default=12, help="first N pairs (each judged in both orders)")
    parser.add_argument("--max-tokens", type=int, default=16, help="cap on each judge reply")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight in the concurrent runs")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", default="runs/bench-judge/throughput.json")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from alignkit.atomic_write import write_json_atomic
    from alignkit.evaluation.meta_eval import load_llmbar
    from alignkit.generation.backend import SamplingParams
    from alignkit.generation.cache import CachedBackend
    from alignkit.generation.openai_backend import OpenAIBackend
    from alignkit.generation.specs import BackendOptions, build_backend
    from alignkit.judges import JudgeConfig, PairItem
    from alignkit.serving.app import create_app
    from alignkit.serving.background import start_in_background

    pairs = load_llmbar(args.pairs_file)[: args.pairs]
    items = [PairItem(p.input, p.output_1, p.output_2) for p in pairs]
    config = JudgeConfig(strategy="plain", params=SamplingParams(max_tokens=args.max_tokens))
    served = CountingBackend(build_backend(args.model, BackendOptions(dtype=args.dtype,
                                                                      batch_size=max(args.concurrency, 1))))
    rows: list[Row] = []
    verdicts = {}
    with start_in_background(create_app(served, "judge", max_prompts_per_call=args.concurrency)) as server, \
            tempfile.TemporaryDirectory() as scratch:
        url = server.base_url + "/v1"
        # Warm-up: the first forward pass pays one-off costs (allocations, kernel selection).
        OpenAIBackend(url, "unused", model="judge").chat([[{"role": "user", "content": "hi"}]],
                                                         SamplingParams(max_tokens=2))
        cache_path = os.path.join(scratch, "judge_cache.sqlite")
        for run, concurrency, cached in (("one at a time", 1, False), ("concurrent, cold cache", args.concurrency, True),
                                         ("concurrent, warm cache", args.concurrency, True)):
            client = OpenAIBackend(url, "unused", model="judge", max_concurrency=concurrency, timeout=600)
            judge_backend = CachedBackend(client, cache_path) if cached else client
            calls_before, prompts_before = served.calls, served.prompts
            judged, seconds = _judge(judge_backend, items, config)
            calls, prompts = served.calls - calls_before, served.prompts - prompts_before
            stats = judge_backend.stats if cached else None
            if cached:
                judge_backend.close()
            verdicts[run] = [j.verdicts() for j in judged]
            failed = sum(v is None for j in judged for v in j.verdicts().values())
            n = sum(len(j.orders) for j in judged)
            rows.append(Row(run, concurrency, n, round(seconds, 2), round(n / seconds, 3), client.usage.requests, calls,
                            round(prompts / calls, 2) if calls else None, stats.misses if stats else None,
                            stats.hits if stats else None, failed))
            print(f"{run}: {n} judgments in {seconds:.1f} s", flush=True)

    same = sum(a == b for a, b in zip(verdicts["one at a time"], verdicts["concurrent, cold cache"]))
    print(f"\njudge throughput: {args.model} ({args.dtype}) behind the HTTP server, {len(items)} LLMBar pairs x 2 "
          f"orders, plain strategy, max_tokens={args.max_tokens}, torch threads={args.threads}")
    header = ("run", "conc.", "judgm.", "seconds", "judgm./s", "HTTP req.", "server calls", "prompts/call",
              "new calls", "cache hits", "failed")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [row.run, row.concurrency, row.judgments, row.seconds, row.judgments_per_s, row.http_requests,
                 row.server_backend_calls, row.prompts_per_backend_call, row.new_calls, row.cache_hits,
                 row.failed_judgments]
        print("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    speedup = rows[0].seconds / rows[1].seconds if rows[1].seconds else None
    print(f"speed-up of {args.concurrency} in flight over one at a time: {speedup:.2f}x; pairs with the same verdicts "
          f"in both runs: {same}/{len(items)} (batched padding can change greedy decoding slightly)")
    warm = rows[2]
    print(f"warm-cache rerun: {warm.new_calls} new calls, {warm.http_requests} HTTP requests, "
          f"{warm.server_backend_calls} server backend calls")
    write_json_atomic(args.out, {"args": vars(args), "rows": [asdict(r) for r in rows], "same_verdicts": same},
                      allow_nan=True)


if __name__ == "__main__":
    main()
