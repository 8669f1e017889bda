"""An OpenAI-compatible HTTP server over any `Backend`.

    app = create_app(LocalBackend(model, tokenizer), "my-model")
    serve(backend, "my-model", port=8000)   # then: openai.OpenAI(base_url="http://host:8000/v1")

Endpoints: /v1/models, /v1/chat/completions, /v1/completions (no streaming). Requests are
handed to a `RequestBatcher`, which calls the backend from one thread and merges requests
that are waiting together. Errors use OpenAI's {"error": {...}} body: 400 for invalid
requests, 404 for an unknown model, 502 when the backend returned an error completion
(never an empty answer), 500 for anything else.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from typing import AsyncIterator, Sequence

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from alignkit.generation.backend import Backend, Completion, SamplingParams
from alignkit.serving.batcher import Kind, RequestBatcher
from alignkit.serving.responses import chat_response, completion_response, error_body
from alignkit.serving.schemas import ChatCompletionRequest, CompletionRequest


class ApiError(Exception):
    def __init__(self, status: int, message: str, error_type: str = "invalid_request_error",
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.error_type, self.code = status, message, error_type, code


def _field_path(location: Sequence) -> str:
    parts = [str(part) for part in location if part != "body"]
    return ".".join(parts) or "body"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error_body(error.message, error.error_type, error.code), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [f"{_field_path(e['loc'])}: {e['msg']}" for e in error.errors()]
        first_field = _field_path(error.errors()[0]["loc"]) if error.errors() else None
        return JSONResponse(error_body("; ".join(problems), "invalid_request_error", param=first_field),
                            status_code=400)


def create_app(backend: Backend, model_name: str, *, default_max_tokens: int = 512,
               max_prompts_per_call: int = 64) -> FastAPI:
    """`default_max_tokens` applies when a request sets neither max_tokens nor max_completion_tokens."""
    batcher = RequestBatcher(backend, max_prompts_per_call=max_prompts_per_call)
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(batcher.close)

    app = FastAPI(title=f"alignkit: {model_name}", lifespan=lifespan)
    app.state.batcher = batcher
    _install_error_handlers(app)

    def check_model(requested: str) -> None:
        if requested != model_name:
            raise ApiError(404, f"model {requested!r} not found; this server serves {model_name!r}",
                           code="model_not_found")

    async def generate(kind: Kind, prompts: list, params: SamplingParams) -> list[list[Completion]]:
        try:
            results = await asyncio.wrap_future(batcher.submit(kind, prompts, params))
        except ValueError as error:  # the backend rejected the input (e.g. prompt too long)
            raise ApiError(400, str(error)) from error
        except Exception as error:
            raise ApiError(500, f"generation failed: {type(error).__name__}: {error}", "server_error") from error
        failed = [c.error or "unknown error" for samples in results for c in samples if c.finish_reason == "error"]
        if failed:
            raise ApiError(502, f"the backend failed to answer: {failed[0]}", "server_error")
        return results

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list",
                "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "alignkit"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest) -> dict:
        check_model(request.model)
        params = request.sampling_params(default_max_tokens)
        (samples,) = await generate("chat", [request.conversation()], params)
        return chat_response(model_name, samples, params.logprobs)

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest) -> dict:
        check_model(request.model)
        params = request.sampling_params(default_max_tokens)
        per_prompt = await generate("complete", request.prompts(), params)
        return completion_response(model_name, per_prompt, params.logprobs)

    return app


def serve(backend: Backend, model_name: str, host: str = "127.0.0.1", port: int = 8000, **app_options) -> None:
    """Serves `backend` until interrupted; `app_options` go to `create_app`."""
    uvicorn.run(create_app(backend, model_name, **app_options), host=host, port=port)
