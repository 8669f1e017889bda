"""A data job killed with SIGKILL part-way and run again ends with the outputs of a run that was never
interrupted, and asks the model again only for what was in flight.

The job runs as its own process (`python -m alignkit.cli data ...`) against a stand-in OpenAI-compatible
server in this process. The server answers `hold_after` requests, then holds the next ones in flight; the
test kills the job at that moment, releases the server, reruns the same command to the end, and compares
every output byte for byte with a run in another folder (its own journal and cache)."""
import hashlib
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from alignkit.construction.journal import JOURNAL
from alignkit.cli import main
from tests.helpers.construction import standin_server
from tests.helpers.files import output_bytes, write_jsonl
from tests.helpers.judges import shown_outputs
from tests.helpers.paths import ROOT

VERBS = ["Explain", "Summarise", "Compare", "List", "Describe", "Plan", "Rewrite", "Classify", "Estimate",
         "Outline", "Critique", "Translate"]
THINGS = ["tidal energy", "a sourdough starter", "binary search", "the water cycle", "tax brackets", "jazz chords",
          "compound interest", "volcanoes", "password hygiene", "beekeeping", "chess openings", "cloud types",
          "the French revolution", "sorting algorithms", "a bicycle gear", "sleep cycles", "photosynthesis"]
AUDIENCES = ["for a child", "in three sentences", "as a haiku", "for a busy manager", "with one example",
             "in plain words", "as a short list", "for a beginner"]


def digest(*parts) -> int:
    return int(hashlib.sha256(repr(parts).encode()).hexdigest(), 16)


def rule(text: str, k: int, seed) -> str:
    """Proposals: a numbered list as asked; judge prompts: the output with the larger digest, unless the
    digest says the reply is garbled; anything else: an answer that depends on the prompt and sample."""
    continued = re.search(r"\n(\d+)\.$", text)  # a raw list to continue (mode: complete)
    if continued:
        first = int(continued.group(1))
        listed = "\n".join(f"{n}. {VERBS[digest(text, n) % 12]} {THINGS[digest(text, n, 1) % 17]} "
                           f"{AUDIENCES[digest(text, n, 2) % 8]}." for n in range(first, first + 5))
        return listed[len(str(first)) + 1:] + "\n\nThat is the list."
    if "[Output A begins]" in text:
        shown = shown_outputs(text)
        if digest(sorted(shown.values())) % 5 == 0:
            return "They are both fine."
        return "Verdict: A" if digest(shown["A"]) > digest(shown["B"]) else "Verdict: B"
    return f"Answer {digest(text, k, seed) % 1000}: " + " ".join(text.split()[:6 + digest(text, k) % 5])


JOBS = {
    "self-instruct": (["configs/data/self_instruct.yaml", "target=24", "max_rounds=5", "prompts_per_round=4"],
                      ("instructions.jsonl", "sft.jsonl", "dropped.jsonl")),
    "label": (["configs/data/label.yaml", "max_prompts=12", "batch_size=3"], ("pairs.jsonl", "dropped.jsonl")),
}


def command(job, url, out, prompts=None):
    config, *keys = JOBS[job][0]
    keys = [f"output_dir={out}", "progress=false", f"generator.model=openai:standin@{url}",
            "generator.batch_size=2", "generator.concurrency=2", *keys]
    if job == "label":
        keys += [f"judge.model=openai:standin@{url}", "judge.concurrency=2", f"prompts={prompts}"]
    return ["data", job, "--config", config, *keys]


@pytest.mark.parametrize("job, hold_after", [("self-instruct", 3), ("self-instruct", 14), ("label", 9)])
def test_a_job_killed_mid_way_resumes_to_the_outputs_of_an_uninterrupted_run(tmp_path, monkeypatch, job,
                                                                            hold_after):
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    monkeypatch.chdir(ROOT)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Question {i}: {THINGS[i]}?"} for i in range(14)])
    with standin_server(rule) as (url, log):
        assert main(command(job, url, tmp_path / "straight", prompts)) == 0
        straight_calls = len(log.prompts)

        log.prompts.clear()
        log.answered, log.hold_after = 0, hold_after
        killed = tmp_path / "killed"
        process = subprocess.Popen([sys.executable, "-m", "alignkit.cli", *command(job, url, killed, prompts)],
                                   env={**os.environ, "ALIGNKIT_DEBUG": "1"}, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while len(log.prompts) <= hold_after:  # until a request past the answered ones is held in flight
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "the job never reached the held request"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        process.stderr.close()
        assert process.returncode == -signal.SIGKILL
        journaled = len(open(killed / JOURNAL, encoding="utf-8").read().splitlines())
        assert not (killed / "summary.json").exists()

        log.hold_after = None
        answered_before_kill = log.answered
        log.prompts.clear()
        assert main(command(job, url, killed, prompts)) == 0
        rerun_calls = len(log.prompts)

    outputs = JOBS[job][1]
    assert output_bytes(killed, outputs) == output_bytes(tmp_path / "straight", outputs)
    assert len(open(killed / JOURNAL, encoding="utf-8").read().splitlines()) > journaled
    # The rerun asked again only what had not come back before the kill: the calls in flight, and answers
    # to calls sent beside them that the cache had not stored yet (at most one chunk of concurrency 2).
    assert answered_before_kill == hold_after
    assert straight_calls - answered_before_kill <= rerun_calls <= straight_calls - answered_before_kill + 2
