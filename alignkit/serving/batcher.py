"""One worker thread that feeds the backend, merging requests that arrive together.

The backend is called from a single thread, so a local model never sees two generate
calls at once. Requests waiting in the queue with the same kind (chat or raw completion)
and the same SamplingParams are merged into one backend call, which a LocalBackend turns
into shared batches. If a merged call fails, each request is retried alone so the error
reaches only the request that caused it.

Streamed requests go through the same queue and the same thread, one at a time and never merged:
while one streams, the backend is busy with it alone, and requests that arrive meanwhile wait in
the queue (and are merged with each other) until it ends. So a local model still never runs two
generations at once, and nothing waits longer than the requests queued ahead of it, a stream's
length being bounded by the server's max_tokens cap. A stream whose client went away is closed
at its next delta, which stops the backend's generation (LocalBackend at its next token).
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Sequence

from alignkit.generation.backend import Backend, Completion, SamplingParams
from alignkit.serving.streaming import END, Kind, stream_deltas


@dataclass
class _Job:
    kind: Kind
    prompts: list  # conversations for "chat", strings for "complete"
    params: SamplingParams
    future: Future = field(default_factory=Future)


@dataclass
class _StreamJob:
    kind: Kind
    prompts: list
    params: SamplingParams
    emit: Callable[[object], bool]  # hands the request a delta, END or an exception; False once nobody listens
    cancelled: threading.Event = field(default_factory=threading.Event)


class RequestBatcher:
    def __init__(self, backend: Backend, max_prompts_per_call: int = 64):
        self.backend = backend
        self.max_prompts_per_call = max_prompts_per_call
        self._queue: queue.Queue[_Job | _StreamJob | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, kind: Kind, prompts: Sequence, params: SamplingParams) -> Future:
        """A future of one list of `params.n` completions per prompt."""
        job = _Job(kind, list(prompts), params)
        self._put(job)
        return job.future

    def submit_stream(self, kind: Kind, prompts: Sequence, params: SamplingParams,
                      emit: Callable[[object], bool]) -> threading.Event:
        """Queues a streamed request: `emit` will get its StreamDeltas in order, then END, or an exception
        where it failed (input the backend rejects raises ValueError before any delta). Set the returned
        event to stop it (the client went away); it is also stopped once `emit` returns False."""
        job = _StreamJob(kind, list(prompts), params, emit)
        self._put(job)
        return job.cancelled

    def _put(self, job: _Job | _StreamJob) -> None:
        with self._start_lock:  # so close() cannot slip its stop marker between start and put
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="alignkit-batcher", daemon=True)
                self._worker.start()
            self._queue.put(job)

    def close(self) -> None:
        """Lets the worker finish what is queued, then stop."""
        with self._start_lock:
            if self._worker is not None and self._worker.is_alive():
                self._queue.put(None)
                self._worker.join()
            self._worker = None

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            pending, stopping = [first], False
            while sum(len(job.prompts) for job in pending) < self.max_prompts_per_call:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                pending.append(job)
            groups: dict[tuple[Kind, SamplingParams], list[_Job]] = {}
            for job in pending:
                if isinstance(job, _Job):
                    groups.setdefault((job.kind, job.params), []).append(job)
            for jobs in groups.values():
                self._serve(jobs)
            for job in pending:
                if isinstance(job, _StreamJob):
                    self._serve_stream(job)
            if stopping:
                return

    def _serve(self, jobs: list[_Job]) -> None:
        try:
            results = self._call(jobs[0].kind, [p for job in jobs for p in job.prompts], jobs[0].params)
        except Exception as error:  # noqa: BLE001 - handed to the waiting requests
            if len(jobs) > 1:
                for job in jobs:
                    self._serve([job])
            else:
                jobs[0].future.set_exception(error)
            return
        offset = 0
        for job in jobs:
            job.future.set_result(results[offset:offset + len(job.prompts)])
            offset += len(job.prompts)

    def _serve_stream(self, job: _StreamJob) -> None:
        if job.cancelled.is_set():
            return
        try:
            deltas = stream_deltas(self.backend, job.kind, job.prompts, job.params)
            try:
                for delta in deltas:
                    if job.cancelled.is_set() or not job.emit(delta):
                        return
                job.emit(END)
            finally:
                close = getattr(deltas, "close", None)
                if close is not None:  # ends the backend's generation when the stream stopped early
                    close()
        except Exception as error:  # noqa: BLE001 - handed to the waiting request
            job.emit(error)

    def _call(self, kind: Kind, prompts: list, params: SamplingParams) -> list[list[Completion]]:
        call = self.backend.chat if kind == "chat" else self.backend.complete
        results = call(prompts, params)
        if len(results) != len(prompts):
            raise RuntimeError(f"backend returned {len(results)} results for {len(prompts)} prompts")
        return results
