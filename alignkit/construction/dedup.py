"""`alignkit data dedup`: exact and near-duplicate records removed, the first occurrence kept.

Two passes over the records in input order (the files in the order given), on the text `text` picks:
1. Exact: records whose text is the same once case, punctuation and spacing are folded away
   (`filters.normalise`) are one record; the first is kept. A text with no words at all (only symbols or
   emoji) is compared as written, so two different emoji replies stay two records.
2. Near: each remaining record's shingles (every run of `shingle_words` consecutive normalised words; a
   shorter text is one shingle) get a MinHash (datasketch, `num_perm` permutations drawn from `seed`, so a
   rerun drops the same records) and MinHashLSH proposes the kept records whose Jaccard similarity is
   probably at least `threshold`. Every proposal is checked with the exact Jaccard of the two shingle sets,
   so a false positive of LSH is never dropped; a record is dropped as a near duplicate of the most similar
   kept record (the earliest on a tie). Because of that check a false positive costs one set comparison,
   while a false negative is a duplicate left in, so the LSH bands are chosen with false negatives weighted
   99 to 1 (datasketch's default weighs them equally, which at 0.8 and 128 permutations proposes a pair of
   Jaccard 0.8 only 40% of the time; these bands propose it 99% of the time, and 0.85 almost always).
   summary.json reports the bands, the pairs proposed and those the exact check turned down.

Shingles are 3 words by default because instructions are short: in a 15-word prompt one changed word
alters 3 of 13 shingles (Jaccard 0.63), so 0.8 catches re-punctuated, re-spaced or lightly edited copies
but not rewrites. Longer shingles suit long documents; a lower threshold reaches paraphrases.

A record is compared with the records kept so far, never with dropped ones: in a chain A ~ B ~ C where C
is far from A, A and C are kept. dropped.jsonl names, for each dropped record, the kept record it
duplicates (its file:line and its 0-based index in the input) and, for a near duplicate, the exact and
the estimated (MinHash) Jaccard.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from alignkit.config import require_choice, require_number
from alignkit.construction.counts import Counts, JobResult
from alignkit.construction.quality import (DROPPED, KEPT, TEXTS, InputConfig, check_output_dir, compared_text,
                                           dropped_row, read_items, words, write_outputs)
from alignkit.construction.stats import kept_stats

EXACT, NEAR = "exact duplicate", "near duplicate"
# (false positive, false negative) weights for choosing LSH bands: every proposal is verified exactly, so a
# false positive costs a set comparison and a false negative a duplicate left in the data.
LSH_WEIGHTS = (0.01, 0.99)


@dataclass
class DedupConfig(InputConfig):
    text: str = "all"  # what is compared: prompt (user turns) | response (assistant turns, chosen) | all
    near: bool = True  # also remove near duplicates (false: exact duplicates only)
    threshold: float = 0.8  # Jaccard similarity of word shingles at which a record is a near duplicate
    shingle_words: int = 3  # words per shingle
    num_perm: int = 128  # MinHash permutations: more estimate Jaccard better and miss fewer pairs, slower
    seed: int = 0  # draws the permutations: the same seed drops the same records

    def validate(self, where: str = "") -> None:
        super().validate(where)
        require_choice(where, "text", self.text, TEXTS)
        require_number(where, "threshold", self.threshold, low=0, high=1, low_open=True)
        require_number(where, "shingle_words", self.shingle_words, low=1, whole=True)
        require_number(where, "num_perm", self.num_perm, low=2, whole=True)
        require_number(where, "seed", self.seed, low=0, high=2**32 - 1, whole=True)


@dataclass
class NearMatch:
    index: int  # of the kept record, in the list given to find_near
    jaccard: float  # exact, of the two shingle sets
    estimated: float  # MinHash's estimate


def exact_key(text: str) -> str:
    """What two exact duplicates share: the normalised words, or the stripped text when it has none."""
    return " ".join(words(text)) or text.strip()


def shingles(text: str, size: int) -> set[str]:
    """Every run of `size` consecutive normalised words; a shorter text is one shingle (a text without words:
    itself, stripped)."""
    found = words(text)
    if len(found) <= size:
        return {" ".join(found) or text.strip()}
    return {" ".join(found[start:start + size]) for start in range(len(found) - size + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def find_exact(keys: Sequence[str]) -> list[int | None]:
    """For each key, the index of the first earlier record with the same key; None for a first occurrence."""
    first: dict[str, int] = {}
    found = []
    for index, key in enumerate(keys):
        earlier = first.setdefault(key, index)
        found.append(None if earlier == index else earlier)
    return found


def find_near(sets: Sequence[set[str]], *, threshold: float, num_perm: int, seed: int,
              progress: bool = False) -> tuple[list[NearMatch | None], dict]:
    """For each shingle set in order, the kept earlier set it nearly duplicates (exact Jaccard >= threshold,
    among LSH's proposals; the most similar, the earliest on a tie), or None when it is kept; and what LSH
    did: its bands and rows, the pairs it proposed and those the exact check turned down."""
    from datasketch import MinHash, MinHashLSH
    from tqdm.auto import tqdm

    # The scheme is named so results do not move with datasketch's default; permutations are drawn once.
    scheme = "affine32"
    permutations = MinHash(num_perm=num_perm, seed=seed, scheme=scheme).permutations

    def minhash(shingle_set: set[str]) -> MinHash:
        sketch = MinHash(num_perm=num_perm, seed=seed, permutations=permutations, scheme=scheme)
        sketch.update_batch([shingle.encode("utf-8") for shingle in shingle_set])
        return sketch

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
    matches: list[NearMatch | None] = []
    proposed = rejected = 0
    for index, shingle_set in enumerate(tqdm(sets, desc="near duplicates", unit="record", disable=not progress)):
        sketch = minhash(shingle_set)
        best = None
        for other in sorted(lsh.query(sketch)):
            similarity = jaccard(shingle_set, sets[other])
            proposed += 1
            rejected += similarity < threshold
            if similarity >= threshold and (best is None or similarity > best[1]):
                best = (other, similarity)
        if best is None:
            lsh.insert(index, sketch)
            matches.append(None)
        else:
            matches.append(NearMatch(best[0], best[1], sketch.jaccard(minhash(sets[best[0]]))))
    return matches, {"bands": lsh.b, "rows": lsh.r, "proposed": proposed, "rejected": rejected}


def run_dedup(config: DedupConfig, *, tokenizer=None) -> JobResult:
    """`alignkit data dedup`; `tokenizer`: one already loaded (tests), instead of `config.tokenizer`."""
    check_output_dir(config.output_dir)
    items = read_items(config.data, progress=config.progress)
    texts = [compared_text(item, config.text) for item in items]
    counts = Counts()
    counts.declare("exact", (EXACT,))
    dropped: dict[int, dict] = {}
    survivors = []
    for index, first in enumerate(find_exact([exact_key(text) for text in texts])):
        if first is None:
            counts.keep("exact")
            survivors.append(index)
        else:
            counts.drop("exact", EXACT)
            dropped[index] = dropped_row(items[index], EXACT, {"source": items[first].where, "index": first})
    lsh = None  # what LSH did, for the summary (none without the near pass)
    if config.near:
        counts.declare("near", (NEAR,))
        matches, lsh = find_near([shingles(texts[index], config.shingle_words) for index in survivors],
                                 threshold=config.threshold, num_perm=config.num_perm, seed=config.seed,
                                 progress=config.progress)
        for index, match in zip(survivors, matches):
            if match is None:
                counts.keep("near")
                continue
            counts.drop("near", NEAR)
            kept = survivors[match.index]
            dropped[index] = dropped_row(items[index], NEAR, {"source": items[kept].where, "index": kept,
                                                              "jaccard": match.jaccard,
                                                              "estimated_jaccard": match.estimated})
    kept_items = [item for index, item in enumerate(items) if index not in dropped]
    stats = kept_stats(config, kept_items, tokenizer=tokenizer, title="kept")
    return write_outputs(config.output_dir, counts,
                         {KEPT: [item.record.data for item in kept_items],
                          DROPPED: [dropped[index] for index in sorted(dropped)]},
                         {"lsh": lsh, "stats": stats})
