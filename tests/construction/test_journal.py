"""The journal every generating data command resumes from: skip what is done, survive a torn last line,
refuse a folder started with another config."""
import json
import os

import pytest

from alignkit.config import ConfigError
from alignkit.construction.counts import Counts
from alignkit.construction.generator import GeneratorConfig, JobConfig
from alignkit.construction.journal import JOURNAL, Journal, result_config, run_pending
from alignkit.stable_ids import stable_id
from tests.helpers.crash import Crash


def square_all(calls):
    def process(payloads):
        calls.append(list(payloads))
        return [{"square": p * p} for p in payloads]
    return process


def test_run_pending_journals_each_chunk_and_skips_done_units(tmp_path):
    units = [(f"u{i}", i) for i in range(7)]
    calls = []
    journal = Journal(str(tmp_path), "squares", {"k": 1})
    entries = run_pending(journal, units, square_all(calls), chunk_size=3, desc="x", progress=False)
    assert [e["square"] for e in entries] == [i * i for i in range(7)]
    assert calls == [[0, 1, 2], [3, 4, 5], [6]]
    lines = (tmp_path / JOURNAL).read_text().splitlines()
    assert json.loads(lines[0]) == {"job": "squares", "config": {"k": 1}}
    assert [json.loads(line)["id"] for line in lines[1:]] == [f"u{i}" for i in range(7)]

    again = []
    entries = run_pending(Journal(str(tmp_path), "squares", {"k": 1}), units, square_all(again), chunk_size=3,
                          desc="x", progress=False)
    assert again == [] and [e["square"] for e in entries] == [i * i for i in range(7)]


def test_a_crash_mid_job_resumes_with_the_same_entries(tmp_path):
    units = [(stable_id("unit", i), i) for i in range(10)]
    done = []

    def crashing(payloads):
        if len(done) == 2:
            raise Crash()
        done.append(payloads)
        return [{"v": p + 100} for p in payloads]

    with pytest.raises(Crash):
        run_pending(Journal(str(tmp_path / "a"), "j", {}), units, crashing, chunk_size=2, desc="x", progress=False)
    calls = []
    resumed = run_pending(Journal(str(tmp_path / "a"), "j", {}), units, square_all(calls), chunk_size=2, desc="x",
                          progress=False)
    assert calls[0] == [4, 5]  # the first two chunks were journaled before the crash
    straight = run_pending(Journal(str(tmp_path / "b"), "j", {}), units, square_all([]), chunk_size=2, desc="x",
                           progress=False)
    assert [e["id"] for e in resumed] == [e["id"] for e in straight]


def test_a_torn_last_line_is_dropped_and_its_unit_redone(tmp_path):
    journal = Journal(str(tmp_path), "j", {})
    run_pending(journal, [("a", 1), ("b", 2)], square_all([]), chunk_size=1, desc="x", progress=False)
    with open(tmp_path / JOURNAL, "a") as f:
        f.write('{"id": "c", "squ')  # a kill while writing
    calls = []
    reopened = Journal(str(tmp_path), "j", {})
    assert set(reopened.entries) == {"a", "b"}
    run_pending(reopened, [("a", 1), ("b", 2), ("c", 3)], square_all(calls), chunk_size=1, desc="x", progress=False)
    assert calls == [[3]]
    lines = (tmp_path / JOURNAL).read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines[1:]] == ["a", "b", "c"]


def test_another_config_is_refused_and_overwrite_starts_over(tmp_path):
    journal = Journal(str(tmp_path), "j", {"threshold": 0.7}, outputs=("sft.jsonl",))
    run_pending(journal, [("a", 1)], square_all([]), chunk_size=1, desc="x", progress=False)
    result = journal.finish({"sft.jsonl": [{"x": 1}]}, Counts(), rounds=1)
    assert result.written == {"sft.jsonl": 1}
    assert json.loads((tmp_path / "summary.json").read_text())["rounds"] == 1
    with pytest.raises(ConfigError, match=r"threshold: 0.7 -> 0.5.*if_exists=overwrite"):
        Journal(str(tmp_path), "j", {"threshold": 0.5})
    (tmp_path / "mine.jsonl").write_text("{}\n")  # not an output of the job: left alone
    fresh = Journal(str(tmp_path), "j", {"threshold": 0.5}, outputs=("sft.jsonl",), if_exists="overwrite")
    assert fresh.entries == {}
    assert sorted(os.listdir(tmp_path)) == [JOURNAL, "mine.jsonl"]


def test_run_pending_refuses_repeated_ids(tmp_path):
    with pytest.raises(ValueError, match="ids repeat"):
        run_pending(Journal(str(tmp_path), "j", {}), [("a", 1), ("a", 2)], square_all([]), chunk_size=1, desc="x",
                    progress=False)


def test_result_config_leaves_out_what_a_resumed_job_may_change():
    import dataclasses

    @dataclasses.dataclass
    class Cfg(JobConfig):
        generator: GeneratorConfig = dataclasses.field(default_factory=GeneratorConfig)
        threshold: float = 0.7

    kept = result_config(Cfg(output_dir="x", generator=GeneratorConfig(batch_size=3, concurrency=2)))
    assert "output_dir" not in kept and "batch_size" not in kept["generator"]
    assert kept["generator"]["seed"] == 0 and kept["threshold"] == 0.7
    assert result_config(Cfg(output_dir="y", generator=GeneratorConfig(batch_size=9))) == kept


def test_counts_table_lists_every_declared_reason():
    counts = Counts()
    counts.declare("filter", ["rouge", "length"])
    counts.keep("filter", 3)
    counts.drop("filter", "length", 2)
    assert counts.to_dict() == {"filter": {"seen": 5, "kept": 3, "dropped": {"rouge": 0, "length": 2}}}
    assert "rouge 0, length 2" in counts.table()


def test_the_generator_gets_as_many_prompts_at_once_as_it_works_on(tmp_path):
    from alignkit.construction.generator import open_generator
    from alignkit.generation.backend import SamplingParams
    from tests.helpers.construction import RuleBackend

    sizes = []

    class Sizes(RuleBackend):
        def chat(self, conversations, params):
            sizes.append(len(conversations))
            return super().chat(conversations, params)

    conversations = [[{"role": "user", "content": f"q{i}"}] for i in range(7)]
    for model, expected in (("embedded", [3, 3, 1]), ("openai:m@http://127.0.0.1:1/v1", [2, 2, 2, 1])):
        sizes.clear()
        backend = open_generator(GeneratorConfig(model=model, batch_size=3, concurrency=2),
                                 str(tmp_path / f"{len(model)}.sqlite"), Sizes(lambda text, k, seed: text.upper()))
        replies = backend.chat(conversations, SamplingParams(max_tokens=4))
        backend.close()
        assert sizes == expected  # each chunk is cached when it returns: a kill loses one chunk at most
        assert [r[0].text for r in replies] == [f"Q{i}" for i in range(7)]
