"""One worker thread that feeds the backend, merging requests that arrive together.

The backend is called from a single thread, so a local model never sees two generate
calls at once. Requests waiting in the queue with the same kind (chat or raw completion)
and the same SamplingParams are merged into one backend call, which a LocalBackend turns
into shared batches. If a merged call fails, each request is retried alone so the error
reaches only the request that caused it.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Literal, Sequence

from alignkit.generation.backend import Backend, Completion, SamplingParams

Kind = Literal["chat", "complete"]


@dataclass
class _Job:
    kind: Kind
    prompts: list  # conversations for "chat", strings for "complete"
    params: SamplingParams
    future: Future = field(default_factory=Future)


class RequestBatcher:
    def __init__(self, backend: Backend, max_prompts_per_call: int = 64):
        self.backend = backend
        self.max_prompts_per_call = max_prompts_per_call
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, kind: Kind, prompts: Sequence, params: SamplingParams) -> Future:
        """A future of one list of `params.n` completions per prompt."""
        job = _Job(kind, list(prompts), params)
        with self._start_lock:  # so close() cannot slip its stop marker between start and put
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="alignkit-batcher", daemon=True)
                self._worker.start()
            self._queue.put(job)
        return job.future

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
                groups.setdefault((job.kind, job.params), []).append(job)
            for jobs in groups.values():
                self._serve(jobs)
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

    def _call(self, kind: Kind, prompts: list, params: SamplingParams) -> list[list[Completion]]:
        call = self.backend.chat if kind == "chat" else self.backend.complete
        results = call(prompts, params)
        if len(results) != len(prompts):
            raise RuntimeError(f"backend returned {len(results)} results for {len(prompts)} prompts")
        return results
