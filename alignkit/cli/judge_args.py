"""The judge flags shared by the judging commands (eval pairwise, eval grade, leaderboard, meta-eval)
and the `JudgeOptions` they describe."""
from __future__ import annotations

import argparse

JUDGE_SPEC_HELP = ("judge backend: 'embedded', a model folder or hub id (loaded here), "
                   "'openai:<model>@<base_url>' (any OpenAI-compatible server; key from --judge-api-key-env), "
                   "'openai:<model>' (URL from --judge-base-url or OPENAI_BASE_URL) or "
                   "'vllm:<model>' (embedded, a folder or hub id; needs vLLM and a GPU)")


def add_judge_args(p: argparse.ArgumentParser, strategy: bool = True) -> None:
    g = p.add_argument_group("judge")
    g.add_argument("--judge", default="embedded", help=JUDGE_SPEC_HELP)
    if strategy:
        g.add_argument("--strategy", default="plain",
                       help="plain, or a '+'-joined set of rules, cot, metrics, reference, swap (e.g. rules+cot)")
        g.add_argument("--single-order", action="store_true",
                       help="judge each pair in one order only (default: both orders, reported separately)")
        g.add_argument("--allow-tie", action="store_true", help="offer the judge 'Verdict: tie'")
        g.add_argument("--use-logprobs", action="store_true",
                       help="read the verdict from the judge's top log-probabilities (verdict-only strategies)")
    g.add_argument("--verdict-pattern", default=None,
                   help="for a judge that answers in its own format: a regex whose one group is the answer, e.g. "
                        "'Output \\((a|b)\\) is better' (default: the 'Verdict: A' line)")
    g.add_argument("--judge-max-tokens", type=int, default=None,
                   help="cap on each judge reply (default 32 for verdict-only replies, 512 with cot/swap and grading)")
    g.add_argument("--aux-max-tokens", type=int, default=256, help="cap on generated metrics / reference answers")
    g.add_argument("--judge-temperature", type=float, default=0.0)
    g.add_argument("--judge-seed", type=int, default=None)
    g.add_argument("--parse-retries", type=int, default=0, help="re-ask a judge whose reply cannot be parsed")
    g.add_argument("--judge-batch-size", type=int, default=16, help="judge prompts per backend call")
    g.add_argument("--cache", default=None, help="SQLite judge cache (default: OUT/judge_cache.sqlite)")
    g.add_argument("--judge-base-url", default=None, help="base URL for 'openai:<model>' specs without '@<url>'")
    g.add_argument("--judge-api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    g.add_argument("--judge-concurrency", type=int, default=8, help="HTTP requests in flight at once")
    g.add_argument("--judge-timeout", type=float, default=60.0, help="seconds per HTTP request")
    g.add_argument("--judge-retries", type=int, default=5, help="retries on 429, 5xx, timeouts")
    g.add_argument("--judge-dtype", default="fp32", choices=["fp32", "bf16"], help="weights of a local judge")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def judge_options(a):
    from alignkit.generation.specs import BackendOptions
    from alignkit.evaluation.commands import JudgeOptions
    from alignkit.paths import check_output_file

    if a.verdict_pattern is not None:
        from alignkit.judges.verdicts import compile_verdict_pattern

        compile_verdict_pattern(a.verdict_pattern)  # a bad one stops here, before the judge loads
    if a.cache:
        check_output_file(a.cache, "--cache")  # an SQLite file: a folder there would fail after the judge loads
    backend = BackendOptions(base_url=a.judge_base_url, api_key_env=a.judge_api_key_env,
                             max_concurrency=a.judge_concurrency, timeout=a.judge_timeout,
                             max_retries=a.judge_retries, dtype=a.judge_dtype, batch_size=a.judge_batch_size)
    return JudgeOptions(spec=a.judge, strategy=getattr(a, "strategy", "plain"), max_tokens=a.judge_max_tokens,
                        aux_max_tokens=a.aux_max_tokens, temperature=a.judge_temperature, seed=a.judge_seed,
                        both_orders=not getattr(a, "single_order", False), allow_tie=getattr(a, "allow_tie", False),
                        parse_retries=a.parse_retries, use_logprobs=getattr(a, "use_logprobs", False),
                        verdict_pattern=a.verdict_pattern,
                        batch_size=a.judge_batch_size, cache=a.cache, progress=not a.no_progress, backend=backend)

