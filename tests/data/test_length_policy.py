"""SFT and preference examples are fitted to max_length by one policy and counted the same way."""
import pytest

from alignkit.data.formats import Conversation
from alignkit.data.lengths import LengthReport
from alignkit.data.pref_examples import build_examples
from alignkit.data.sft import build_sft_examples

# fits; fits once its response is cut; a prompt so long that a cut leaves no response token
ROWS = [("short", "a"), ("hi", "fox " * 40), ("long " * 60, "dog")]


def conversations(rows):
    return [Conversation([{"role": "user", "content": p}, {"role": "assistant", "content": r}], "mem", i + 1)
            for i, (p, r) in enumerate(rows)]


def pref_items(rows):
    return [([{"role": "user", "content": p}], [[{"role": "assistant", "content": r}]], None, None, "mem", i + 1,
             "line") for i, (p, r) in enumerate(rows)]


@pytest.mark.parametrize("policy, truncated, dropped", [("truncate", 1, 1), ("drop", 0, 2)])
def test_sft_and_preference_examples_get_the_same_counts_and_sequences(tiny_tok, policy, truncated, dropped):
    sft, sft_lengths = build_sft_examples(conversations(ROWS), tiny_tok, max_length=40, overlong=policy)
    pref, pref_lengths = build_examples(pref_items(ROWS), tiny_tok, max_length=40, overlong=policy)
    for lengths in (sft_lengths, pref_lengths):
        assert (lengths.truncated, lengths.dropped, lengths.policy) == (truncated, dropped, policy)
    assert [(ex.input_ids, ex.labels) for ex in sft] == [ex.sequences[0] for ex in pref]
    assert all(len(ex.input_ids) <= 40 for ex in sft)


def test_each_builder_keeps_its_drop_notes(tiny_tok):
    _, sft = build_sft_examples(conversations(ROWS), tiny_tok, max_length=40, overlong="truncate")
    _, pref = build_examples(pref_items(ROWS), tiny_tok, max_length=40, overlong="truncate")
    assert sft.dropped_where == ["mem:3 (no target left after truncation)"]
    assert pref.dropped_where == ["mem:3 (no response token left after truncation)"]
    _, sft = build_sft_examples(conversations(ROWS), tiny_tok, max_length=40, overlong="drop")
    _, pref = build_examples(pref_items(ROWS), tiny_tok, max_length=40, overlong="drop")
    assert sft.dropped_where == ["mem:2", "mem:3"]
    assert pref.dropped_where == ["mem:2 (over max_length)", "mem:3 (over max_length)"]


def test_an_example_is_dropped_whole_and_truncations_count_per_sequence():
    lengths = LengthReport(4, "truncate")
    long_seq, short_seq = ([1, 2, 3, 4, 5, 6], [-100, 2, 3, 4, 5, 6]), ([1, 2], [-100, 2])
    assert lengths.fit([long_seq, long_seq, short_seq], "a:1", empty_reason="empty") == [
        ([1, 2, 3, 4], [-100, 2, 3, 4])] * 2 + [short_seq]
    assert (lengths.truncated, lengths.dropped) == (2, 0)
    prompt_only = ([1, 2, 3, 4, 5, 6], [-100] * 5 + [6])
    assert lengths.fit([long_seq, prompt_only], "a:2", empty_reason="empty") is None
    assert (lengths.truncated, lengths.dropped, lengths.dropped_where) == (2, 1, ["a:2 (empty)"])


@pytest.mark.parametrize("build, items", [(build_sft_examples, conversations), (build_examples, pref_items)])
def test_an_unknown_policy_is_refused_alike(tiny_tok, build, items):
    with pytest.raises(ValueError, match=r"overlong must be one of \('truncate', 'drop'\), not 'cut'"):
        build(items(ROWS), tiny_tok, max_length=40, overlong="cut")
