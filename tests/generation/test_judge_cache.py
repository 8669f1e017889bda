"""CachedBackend: hits, misses, keys, errors, reruns, and two processes writing one file at once."""
from __future__ import annotations

import multiprocessing
import sqlite3

import pytest

from alignkit.generation.backend import Completion, SamplingParams
from alignkit.generation.cache import CachedBackend, cache_key
from alignkit.judges import JudgeConfig, PairItem, judge_pairs


class EchoBackend:
    """Replies 'echo:<last message>' (or errors for messages containing FAIL); counts calls and prompts."""

    def __init__(self, model_id: str = "echo-model"):
        self.model_id = model_id
        self.calls = 0
        self.prompts_seen = 0

    def _reply(self, text: str, params: SamplingParams) -> list[Completion]:
        if "FAIL" in text:
            return [Completion("", finish_reason="error", error="boom")] * params.n
        return [Completion(f"echo:{text}", completion_tokens=len(text), top_logprobs=[{"e": -0.5, "x": -1.5}])
                for _ in range(params.n)]

    def chat(self, conversations, params):
        self.calls += 1
        self.prompts_seen += len(conversations)
        return [self._reply(conversation[-1]["content"], params) for conversation in conversations]

    def complete(self, prompts, params):
        self.calls += 1
        self.prompts_seen += len(prompts)
        return [self._reply(prompt, params) for prompt in prompts]


class ForbiddenBackend(EchoBackend):
    def chat(self, conversations, params):
        raise AssertionError("a fully cached rerun must not call the backend")

    complete = chat


def conv(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_hits_misses_and_a_rerun_without_calls(tmp_path):
    path = tmp_path / "cache.db"
    backend = EchoBackend()
    cached = CachedBackend(backend, path)
    first = cached.chat([conv("a"), conv("b"), conv("c")], SamplingParams())
    assert [r[0].text for r in first] == ["echo:a", "echo:b", "echo:c"]
    assert (cached.stats.misses, cached.stats.hits, cached.stats.backend_calls, cached.stats.stored) == (3, 0, 1, 3)

    second = cached.chat([conv("b"), conv("d")], SamplingParams())
    assert [r[0].text for r in second] == ["echo:b", "echo:d"]
    assert backend.prompts_seen == 4  # only "d" was new
    assert (cached.stats.hits, cached.stats.misses) == (1, 4)

    rerun = CachedBackend(ForbiddenBackend(), path)
    again = rerun.chat([conv("a"), conv("b"), conv("c"), conv("d")], SamplingParams())
    assert [r[0] for r in again] == [r[0] for r in first + second[1:]]  # all fields, top_logprobs included
    assert again[0][0].top_logprobs == [{"e": -0.5, "x": -1.5}]
    assert (rerun.stats.hits, rerun.stats.misses, rerun.stats.backend_calls) == (4, 0, 0)
    assert len(rerun) == 4


@pytest.mark.parametrize("change", ["temperature", "seed", "max_tokens", "n", "logprobs", "return_tokens", "model",
                                    "message", "kind"])
def test_anything_that_changes_the_output_changes_the_key(tmp_path, change):
    path = tmp_path / "cache.db"
    CachedBackend(EchoBackend(), path).chat([conv("same")], SamplingParams())
    params = {"temperature": SamplingParams(temperature=0.7), "seed": SamplingParams(seed=1),
              "max_tokens": SamplingParams(max_tokens=5), "n": SamplingParams(n=2),
              "logprobs": SamplingParams(logprobs=3),
              "return_tokens": SamplingParams(return_tokens=True)}.get(change, SamplingParams())
    backend = EchoBackend("other-model" if change == "model" else "echo-model")
    cached = CachedBackend(backend, path)
    if change == "kind":
        cached.complete(["same"], params)
    else:
        cached.chat([[{"role": "system", "content": "x"}] + conv("same")] if change == "message" else [conv("same")],
                    params)
    assert backend.calls == 1 and cached.stats.misses == 1


def test_keys_of_existing_calls_are_unchanged():
    # Pinned from before SamplingParams had return_tokens: judge caches written then must still hit.
    params = SamplingParams(max_tokens=512, stop=("x",), logprobs=5, seed=3)
    assert cache_key("judge", "chat", params, conv("hi"))[0] == \
        "2ef73cf107eb1b74ff565c9dd27d6ee4faf774cf899fed3a706bd41bde371bec"
    assert cache_key("judge", "complete", SamplingParams(), "hi")[0] == \
        "14d53b06852ed6790e159d7cd313986314a57f3a8fb3b62aedc7c96deaaaa273"


def test_token_ids_and_logprobs_survive_the_cache_and_old_rows_still_load(tmp_path):
    path = tmp_path / "cache.db"
    backend = EchoBackend()
    backend._reply = lambda text, params: [Completion(text, token_ids=[4, 2], logprobs=[-0.5, -1.0])]
    CachedBackend(backend, path).chat([conv("new")], SamplingParams(return_tokens=True))
    # A row stored before Completion had these fields holds none of them.
    old_key, old_request = cache_key("echo-model", "chat", SamplingParams(), conv("old"))
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO completions VALUES (?, ?, ?, ?, 0)",
                   (old_key, "echo-model", old_request, '[{"text": "old reply", "finish_reason": "stop"}]'))
    rerun = CachedBackend(ForbiddenBackend(), path)
    (new,), = rerun.chat([conv("new")], SamplingParams(return_tokens=True))
    (old,), = rerun.chat([conv("old")], SamplingParams())
    assert (new.token_ids, new.logprobs) == ([4, 2], [-0.5, -1.0])
    assert (old.text, old.token_ids, old.logprobs) == ("old reply", None, None)


def test_message_key_order_does_not_matter(tmp_path):
    path = tmp_path / "cache.db"
    CachedBackend(EchoBackend(), path).chat([[{"role": "user", "content": "hi"}]], SamplingParams())
    rerun = CachedBackend(ForbiddenBackend(), path)
    assert rerun.chat([[{"content": "hi", "role": "user"}]], SamplingParams())[0][0].text == "echo:hi"


def test_errors_are_not_cached_and_repeats_in_a_batch_go_once(tmp_path):
    backend = EchoBackend()
    cached = CachedBackend(backend, tmp_path / "cache.db")
    replies = cached.chat([conv("FAIL 1"), conv("ok"), conv("ok")], SamplingParams())
    assert replies[0][0].finish_reason == "error" and replies[2][0].text == "echo:ok"
    assert backend.prompts_seen == 2  # the repeated "ok" was sent once
    assert cached.stats.errors_not_cached == 1 and cached.stats.stored == 1
    cached.chat([conv("FAIL 1"), conv("ok")], SamplingParams())
    assert backend.prompts_seen == 3  # the errored prompt was asked again, "ok" came from the cache
    assert len(cached) == 1


def test_complete_is_cached_too(tmp_path):
    path = tmp_path / "cache.db"
    CachedBackend(EchoBackend(), path).complete(["one", "two"], SamplingParams())
    rerun = CachedBackend(ForbiddenBackend(), path)
    assert [r[0].text for r in rerun.complete(["two", "one"], SamplingParams())] == ["echo:two", "echo:one"]


def test_cache_file_uses_wal(tmp_path):
    path = tmp_path / "cache.db"
    CachedBackend(EchoBackend(), path).chat([conv("x")], SamplingParams())
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _writer(path: str, start: int, stop: int, barrier, results) -> None:
    try:
        backend = EchoBackend()
        cached = CachedBackend(backend, path)
        barrier.wait()
        for i in range(start, stop):  # one small transaction per call, interleaving with the other process
            text = cached.chat([conv(f"prompt {i}")], SamplingParams())[0][0].text
            if text != f"echo:prompt {i}":
                raise AssertionError(f"wrong reply {text!r}")
        results.put(backend.prompts_seen)
    except BaseException as error:  # report instead of leaving the parent waiting on the queue
        results.put(repr(error))


def test_two_processes_write_one_cache_at_once(tmp_path):
    path = str(tmp_path / "shared.db")
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_writer, args=(path, 0, 150, barrier, results)),
               context.Process(target=_writer, args=(path, 100, 250, barrier, results))]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    # Each process asked its backend for its own 100 prompts and for those of the 50 shared ones that the
    # other process had not stored yet.
    assert all(isinstance(seen, int) and 100 <= seen <= 150 for seen in outcomes), outcomes
    assert sum(outcomes) >= 250

    rerun = CachedBackend(ForbiddenBackend(), path)
    replies = rerun.chat([conv(f"prompt {i}") for i in range(250)], SamplingParams())
    assert [r[0].text for r in replies] == [f"echo:prompt {i}" for i in range(250)]
    assert len(rerun) == 250 and rerun.stats.backend_calls == 0


def test_rerunning_a_judge_through_the_cache_makes_no_new_calls(tmp_path):
    def verdict_backend():
        backend = EchoBackend("judge")
        backend._reply = lambda text, params: [Completion("Verdict: A" if "GOOD" in text.split("[Output B")[0]
                                                          else "Verdict: B")]
        return backend

    items = [PairItem("q1", "GOOD", "bad"), PairItem("q2", "bad", "GOOD")]
    path = tmp_path / "judge.db"
    first_backend = verdict_backend()
    config = JudgeConfig(strategy="rules+metrics+reference")
    first = judge_pairs(CachedBackend(first_backend, path), items, config)
    assert first_backend.prompts_seen == 2 + 2 + 4
    rerun_backend = verdict_backend()
    rerun = CachedBackend(rerun_backend, path)
    second = judge_pairs(rerun, items, config)
    assert rerun_backend.calls == 0 and rerun.stats.misses == 0 and rerun.stats.hits == 8
    assert [j.verdicts() for j in second] == [j.verdicts() for j in first] == [{"ab": "a", "ba": "a"},
                                                                                {"ab": "b", "ba": "b"}]
