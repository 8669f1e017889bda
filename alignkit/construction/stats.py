"""`alignkit data stats`: how long a data file's records are, how many turns they have, in what languages.

Per record (read as quality.py describes): the words of its prompt (the user turns) and of its response
(the assistant turns; the chosen or best response of a preference record), optionally their tokens, its
turns (user and assistant messages; a system message is not a turn), and the language of its user and
assistant text. Dedup and decontaminate put the same statistics of what they kept into their summary.

Choices:
- Words are whitespace-separated pieces of the text as written (`filters.word_count`), so the numbers can
  be checked by hand. Tokens are counted turn by turn with the tokenizer's plain encoding (no special
  tokens, no chat template): the text's own length, the same whatever template a model uses.
- Each distribution gives mean, median, p10 and p90 (numpy's default: linear between the two nearest
  values) and max. Responses are described over the records that have one; `empty_responses` counts the
  records that have none (a prompt file, a conversation without an assistant turn). An assistant turn
  that is there but empty is a bad record to the data layer, which stops with its file and line.
- Language is langdetect's guess with a fixed seed (the detector alignkit's IFEval checks use), so a rerun
  gives the same answer; text it cannot judge (digits, symbols) counts as "unknown".
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from alignkit.construction.counts import Counts, JobResult
from alignkit.construction.filters import word_count
from alignkit.construction.quality import InputConfig, Item, check_output_dir, read_items, write_outputs

UNKNOWN = "unknown"


@dataclass
class StatsConfig(InputConfig):
    """Statistics of the records in `data`, printed and written to output_dir/summary.json."""


def distribution(values: list[int]) -> dict | None:
    """mean, median, p10, p90 and max of `values`; None when there are none."""
    import numpy as np

    if not values:
        return None
    array = np.asarray(values, dtype=float)
    return {"mean": float(array.mean()), "median": float(np.median(array)), "p10": float(np.percentile(array, 10)),
            "p90": float(np.percentile(array, 90)), "max": max(values)}


def language(text: str) -> str:
    from alignkit.evaluation.ifeval.language import detect_language

    return detect_language(text) or UNKNOWN


def describe(items: list[Item], *, tokenizer=None, languages: bool = True, progress: bool = False) -> dict:
    """The statistics of `items` (see the module docstring); tokens only with a tokenizer, languages on request."""
    from tqdm.auto import tqdm

    answered = [item for item in items if item.turns("response")]
    stats: dict = {
        "records": len(items),
        "prompt_words": distribution([sum(map(word_count, item.turns("prompt"))) for item in items]),
        "response_words": distribution([sum(map(word_count, item.turns("response"))) for item in answered]),
    }
    if tokenizer is not None:
        def tokens(texts: list[str]) -> int:
            return sum(len(tokenizer(text, add_special_tokens=False).input_ids) for text in texts)

        stats["prompt_tokens"] = distribution([tokens(item.turns("prompt")) for item in items])
        stats["response_tokens"] = distribution([tokens(item.turns("response")) for item in answered])
    stats["turns"] = distribution([len(item.turns("prompt")) + len(item.turns("response")) for item in items])
    if languages:
        found = Counter(language("\n".join(item.turns("prompt") + item.turns("response")))
                        for item in tqdm(items, desc="languages", unit="record", disable=not progress))
        stats["languages"] = dict(sorted(found.items(), key=lambda pair: (-pair[1], pair[0])))
    stats["empty_responses"] = len(items) - len(answered)
    return stats


def stats_table(stats: dict) -> str:
    """The statistics as the commands print them, one line each."""
    names = {"prompt_words": "words per prompt", "response_words": "words per response",
             "prompt_tokens": "tokens per prompt", "response_tokens": "tokens per response",
             "turns": "turns per record"}
    lines = [f"  {'records':<20} {stats['records']}"]
    for key, name in names.items():
        if key in stats:
            spread = stats[key]
            lines.append(f"  {name:<20} " + ("none" if spread is None else "  ".join(
                f"{label} {spread[label]:.4g}" for label in ("mean", "median", "p10", "p90", "max"))))
    if "languages" in stats:
        lines.append(f"  {'languages':<20} " + (", ".join(f"{code} {n}" for code, n in stats["languages"].items())
                                                or "none"))
    lines.append(f"  {'empty responses':<20} {stats['empty_responses']}")
    return "\n".join(lines)


def open_tokenizer(spec: str):
    """The tokenizer `spec` names, or None for an empty spec (words only)."""
    if not spec:
        return None
    from alignkit.models.loading import load_tokenizer

    return load_tokenizer(spec)


def kept_stats(config: InputConfig, items: list[Item], *, tokenizer=None, title: str) -> dict:
    """The statistics of `items` under `config`'s tokenizer and language keys, printed under `title`."""
    stats = describe(items, tokenizer=tokenizer if tokenizer is not None else open_tokenizer(config.tokenizer),
                     languages=config.languages, progress=config.progress)
    print(f"{title}:\n{stats_table(stats)}")
    return stats


def run_stats(config: StatsConfig, *, tokenizer=None) -> JobResult:
    """`alignkit data stats`; `tokenizer`: one already loaded (tests), instead of `config.tokenizer`."""
    check_output_dir(config.output_dir)
    items = read_items(config.data, progress=config.progress)
    counts = Counts()
    counts.keep("records", len(items))
    stats = kept_stats(config, items, tokenizer=tokenizer, title="statistics")
    return write_outputs(config.output_dir, counts, {}, {"stats": stats})
