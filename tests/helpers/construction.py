"""Stand-ins for a generating model in data-construction tests: replies follow a rule the test writes.

`RuleBackend` answers in this process; `standin_server` serves the same rule as OpenAI-compatible
chat and text completion endpoints over real HTTP (uvicorn in a background thread), for jobs that call `openai:<model>@<url>`.
A rule gets the last user message (or the raw prompt) and the sample's index and seed, and returns the reply text.
"""
from __future__ import annotations

import asyncio
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from fastapi import FastAPI, Request

from alignkit.generation.backend import Completion
from tests.helpers.crash import Crash

Rule = Callable[[str, int, "int | None"], str]  # (last user message, sample index, seed) -> reply


class RuleBackend:
    def __init__(self, rule: Rule, model_id: str = "rule"):
        self.rule = rule
        self.model_id = model_id
        self.prompts: list[str] = []  # every last user message asked, in order

    def chat(self, conversations, params):
        out = []
        for conversation in conversations:
            text = conversation[-1]["content"]
            self.prompts.append(text)
            out.append([Completion(self.rule(text, k, params.seed), completion_tokens=1) for k in range(params.n)])
        return out

    def complete(self, prompts, params):
        return [[Completion(self.rule(p, k, params.seed)) for k in range(params.n)] for p in prompts]


class CompletionBackend(RuleBackend):
    """A RuleBackend whose rule may also return a whole Completion (a cut-off or errored reply), and which
    can crash on its `crash_at`-th chat call, standing for a kill mid-job."""

    def __init__(self, rule, crash_at=None):
        super().__init__(rule)
        self.crash_at, self.calls = crash_at, 0

    def chat(self, conversations, params):
        self.calls += 1
        if self.calls == self.crash_at:
            raise Crash()
        out = []
        for conversation in conversations:
            self.prompts.append(conversation[-1]["content"])
            reply = self.rule(conversation[-1]["content"], 0, params.seed)
            out.append([reply if isinstance(reply, Completion) else Completion(reply)])
        return out


class ConversationBackend:
    """A stand-in that answers from the whole conversation (the helpers' RuleBackend sees only its last user
    turn, and a critique call's response is an earlier turn); a reply may be a Completion (errors, cut-offs)."""

    def __init__(self, reply, model_id="conversation-rule", crash_after=None):
        self.reply = reply
        self.model_id = model_id
        self.conversations = []  # every conversation asked, in order
        self.calls = 0
        self.crash_after = crash_after  # chat calls answered before a Crash (a kill mid-job)

    def chat(self, conversations, params):
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise Crash()
        self.calls += 1
        out = []
        for conversation in conversations:
            self.conversations.append(conversation)
            reply = self.reply(conversation)
            out.append([reply if isinstance(reply, Completion) else Completion(reply)])
        return out


class ServerLog:
    def __init__(self) -> None:
        self.prompts: list[str] = []  # every request's last user message, in the order they came
        self.answered = 0
        self.lock = threading.Lock()
        # Requests that come once `hold_after` have been answered wait (in flight) until it is set to None.
        self.hold_after: int | None = None


def standin_app(rule: Rule, log: ServerLog, delay: float = 0.0) -> FastAPI:
    app = FastAPI()

    async def answer(body: dict, text: str, chat: bool) -> dict:
        with log.lock:
            log.prompts.append(text)
        if delay:
            await asyncio.sleep(delay)
        while log.hold_after is not None and log.answered >= log.hold_after:
            await asyncio.sleep(0.01)
        n = body.get("n", 1)
        replies = [rule(text, k, body.get("seed")) for k in range(n)]
        with log.lock:
            log.answered += 1
        usage = {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": 1 + n}
        if not chat:
            return {"id": "c", "object": "text_completion", "created": 0, "model": body["model"], "usage": usage,
                    "choices": [{"index": k, "text": reply, "finish_reason": "stop"} for k, reply in enumerate(replies)]}
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"], "usage": usage,
                "choices": [{"index": k, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
                            for k, reply in enumerate(replies)]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        return await answer(body, body["messages"][-1]["content"], chat=True)

    @app.post("/v1/completions")
    async def complete(request: Request):
        body = await request.json()
        return await answer(body, body["prompt"], chat=False)

    return app


@contextmanager
def standin_server(rule: Rule, delay: float = 0.0) -> Iterator[tuple[str, ServerLog]]:
    """(base URL ending in /v1, log of prompts received) while the server runs."""
    from alignkit.serving.background import start_in_background

    log = ServerLog()
    with start_in_background(standin_app(rule, log, delay)) as server:
        yield server.base_url + "/v1", log
