"""An OpenAI-compatible HTTP server over any `Backend`.

    app = create_app(LocalBackend(model, tokenizer), "my-model")
    serve(backend, "my-model", port=8000)   # then: openai.OpenAI(base_url="http://host:8000/v1")

Endpoints: /v1/models, /v1/chat/completions, /v1/completions, the last two also with
`stream: true` (server-sent events, see serving/streaming.py). Requests are handed to a
`RequestBatcher`, which calls the backend from one thread and merges requests that are waiting
together; a streamed request has that thread to itself while it streams. Errors use OpenAI's
{"error": {"message", "type", "param", "code"}} body for every status: 400 for invalid requests (bad JSON, failed validation, over a limit),
401 without the right API key, 404 for an unknown model or route, 405 for a wrong method, 502
when the backend returned an error completion (never an empty answer), 500 for anything else.
A streamed request gets these too for whatever fails before its first delta (the response starts
only once the backend has produced one); a failure after that is an SSE error event.

With `api_key` set, every route (unknown ones included, so they cannot be probed) requires
`Authorization: Bearer <key>`, the header the openai client sends. `serve` refuses to bind a
non-loopback host without a key unless told `insecure_no_api_key=True`: a model server open to
the network lets anyone spend its compute.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import os
import time
from typing import AsyncIterator, Sequence

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from alignkit.generation.backend import Backend, Completion, SamplingParams
from alignkit.serving.batcher import RequestBatcher
from alignkit.serving.responses import chat_response, completion_response, error_body
from alignkit.serving.schemas import ChatCompletionRequest, CompletionRequest
from alignkit.serving.streaming import Kind, StreamEnd, sse_events


API_KEY_ENV = "ALIGNKIT_API_KEY"  # where `alignkit serve` reads the key by default


class ApiError(Exception):
    def __init__(self, status: int, message: str, error_type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.error_type, self.code = status, message, error_type, code
        self.param = param


def api_key_from_env(name: str = API_KEY_ENV) -> str | None:
    """The key held by environment variable `name`, or None when it is unset.

    Set but blank is an error rather than "no key": it usually means a failed `$(cat keyfile)`,
    and silently serving without a key would be the wrong way to find out.
    """
    key = os.environ.get(name)
    if key is not None and not key.strip():
        raise ValueError(f"environment variable {name} is set but empty; unset it to serve without an API key")
    return key.strip() if key is not None else None


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach; any other host name counts as exposed."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name that may resolve to any interface


def check_exposure(host: str, api_key: str | None, insecure_no_api_key: bool = False) -> None:
    """Refuse (ValueError, one line) to serve a non-loopback `host` without a key, unless told to."""
    if api_key is not None and insecure_no_api_key:
        raise ValueError("--insecure-no-api-key was given but an API key is set; drop one of the two")
    if api_key is None and not insecure_no_api_key and not is_loopback(host):
        raise ValueError(f"refusing to serve on --host {host} without an API key (anyone who can reach the port "
                         f"could use the model): set {API_KEY_ENV} (or the variable named by --api-key-env), "
                         "or pass --insecure-no-api-key")


def _field_path(location: Sequence) -> str:
    parts = [str(part) for part in location if part != "body"]
    return ".".join(parts) or "body"


def _problem(error: dict) -> tuple[str, str | None]:
    """(message, param) for one pydantic error; param is None when no request field is at fault."""
    if error["type"] == "json_invalid":
        position = error["loc"][1] if len(error["loc"]) > 1 else "?"
        reason = (error.get("ctx") or {}).get("error", error["msg"])
        return f"the request body is not valid JSON: {reason} (at character {position})", None
    field = _field_path(error["loc"])
    if field == "body" and error["type"] == "value_error":  # a check across fields (e.g. stream with logprobs)
        return str((error.get("ctx") or {}).get("error", error["msg"])), None
    if field == "body":
        return f"the request body must be a JSON object: {error['msg']}", None
    return f"{field}: {error['msg']}", field


def _http_message(request: Request, error: StarletteHTTPException) -> str:
    where = f"{request.method} {request.url.path}"
    if error.status_code == 404:
        return f"no route {where}; this server has GET /v1/models, POST /v1/chat/completions, POST /v1/completions"
    if error.status_code == 405:
        allowed = next((value for name, value in (error.headers or {}).items() if name.lower() == "allow"), "")
        return f"method not allowed: {where}" + (f" (allowed: {allowed})" if allowed else "")
    return f"{where}: {error.detail}"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error_body(error.message, error.error_type, error.code, error.param),
                            status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [_problem(e) for e in error.errors()] or [("invalid request", None)]
        return JSONResponse(error_body("; ".join(message for message, _ in problems), "invalid_request_error",
                                       param=problems[0][1]), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        error_type = "server_error" if error.status_code >= 500 else "invalid_request_error"
        return JSONResponse(error_body(_http_message(request, error), error_type), status_code=error.status_code,
                            headers=error.headers)


def _digest(key: str) -> bytes:
    # Comparing fixed-length digests keeps even the key's length out of the timing.
    return hashlib.sha256(key.encode("utf-8")).digest()


def _bearer_token(header: str | None) -> str | None:
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _unauthorized(message: str, code: str | None) -> JSONResponse:
    return JSONResponse(error_body(message, "invalid_request_error", code), status_code=401,
                        headers={"WWW-Authenticate": "Bearer"})


def _install_api_key(app: FastAPI, api_key: str) -> None:
    """Every request, routed or not, must carry `Authorization: Bearer <api_key>`."""
    expected = _digest(api_key)

    @app.middleware("http")
    async def require_api_key(request: Request, call_next):
        presented = _bearer_token(request.headers.get("authorization"))
        if presented is None:
            return _unauthorized("no API key: send it in the header 'Authorization: Bearer <key>'", None)
        if not hmac.compare_digest(_digest(presented), expected):
            return _unauthorized("incorrect API key", "invalid_api_key")
        return await call_next(request)


def check_request_limits(default_max_tokens: int, max_completions_per_request: int, max_tokens_cap: int) -> None:
    """ValueError (one line) unless the limits are positive and the default fits under the cap."""
    if max_completions_per_request < 1 or max_tokens_cap < 1:
        raise ValueError(f"max_completions_per_request ({max_completions_per_request}) and max_tokens_cap "
                         f"({max_tokens_cap}) must be at least 1")
    if not 1 <= default_max_tokens <= max_tokens_cap:
        raise ValueError(f"default_max_tokens ({default_max_tokens}) must be between 1 and max_tokens_cap "
                         f"({max_tokens_cap})")


def _check_request_size(params: SamplingParams, prompts: int, tokens_field: str, max_completions: int,
                        max_tokens_cap: int) -> None:
    """400 when one request asks for more completions (n x prompts) or longer ones than the server allows."""
    completions = params.n * prompts
    if completions > max_completions:
        raise ApiError(400, f"the request asks for {completions} completions (n={params.n} x {prompts} prompt(s)); "
                            f"this server allows at most {max_completions} per request",
                       param="n" if prompts == 1 else "prompt")
    if params.max_tokens > max_tokens_cap:
        raise ApiError(400, f"{tokens_field}={params.max_tokens} is more than this server allows ({max_tokens_cap})",
                       param=tokens_field)


def create_app(backend: Backend, model_name: str, *, default_max_tokens: int = 512,
               max_prompts_per_call: int = 64, api_key: str | None = None,
               max_completions_per_request: int = 64, max_tokens_cap: int = 4096) -> FastAPI:
    """`default_max_tokens` applies when a request sets neither max_tokens nor max_completion_tokens.

    `api_key`: None serves anyone who can connect. A request may ask for at most
    `max_completions_per_request` completions (n x its prompts) and `max_tokens_cap` tokens each,
    so that one request cannot occupy the model for everyone else.
    """
    if api_key is not None and not api_key.strip():
        raise ValueError("api_key is empty; pass None to serve without a key")
    check_request_limits(default_max_tokens, max_completions_per_request, max_tokens_cap)
    batcher = RequestBatcher(backend, max_prompts_per_call=max_prompts_per_call)
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(batcher.close)

    app = FastAPI(title=f"alignkit: {model_name}", lifespan=lifespan)
    app.state.batcher = batcher
    _install_error_handlers(app)
    if api_key is not None:
        _install_api_key(app, api_key.strip())

    def check_model(requested: str) -> None:
        if requested != model_name:
            raise ApiError(404, f"model {requested!r} not found; this server serves {model_name!r}",
                           code="model_not_found", param="model")

    def check_size(params: SamplingParams, prompts: int, tokens_field: str) -> None:
        _check_request_size(params, prompts, tokens_field, max_completions_per_request, max_tokens_cap)

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

    async def stream(kind: Kind, prompts: list, params: SamplingParams, include_usage: bool) -> StreamingResponse:
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()

        def emit(item: object) -> bool:  # called from the batcher's thread
            try:
                loop.call_soon_threadsafe(items.put_nowait, item)
            except RuntimeError:  # the event loop is closed: the server is stopping, nobody listens
                return False
            return True

        cancel = batcher.submit_stream(kind, prompts, params, emit)
        try:
            # The status line waits for the first delta, so that input the backend rejects, or a
            # failure before any text, still gets its JSON error and status code.
            first = await items.get()
            if isinstance(first, ValueError):
                raise ApiError(400, str(first)) from first
            if isinstance(first, BaseException):
                raise ApiError(500, f"generation failed: {type(first).__name__}: {first}", "server_error") from first
            if isinstance(first, StreamEnd):
                raise ApiError(500, "the backend streamed no answer", "server_error")
            if first.finish_reason == "error":
                raise ApiError(502, f"the backend failed to answer: {first.error or 'unknown error'}", "server_error")
        except BaseException:
            cancel.set()
            raise

        async def events():
            try:
                async for text in sse_events(kind, model_name, len(prompts) * params.n, params.n, include_usage,
                                             first, items.get):
                    yield text
            finally:  # also when the client went away (the task is cancelled): stop the generation
                cancel.set()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list",
                "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "alignkit"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest):
        check_model(request.model)
        params = request.sampling_params(default_max_tokens)
        check_size(params, 1, "max_completion_tokens" if request.max_completion_tokens else "max_tokens")
        if request.stream:
            return await stream("chat", [request.conversation()], params, request.include_usage())
        (samples,) = await generate("chat", [request.conversation()], params)
        return chat_response(model_name, samples, params.logprobs)

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest):
        check_model(request.model)
        params = request.sampling_params(default_max_tokens)
        check_size(params, len(request.prompts()), "max_tokens")
        if request.stream:
            return await stream("complete", request.prompts(), params, request.include_usage())
        per_prompt = await generate("complete", request.prompts(), params)
        return completion_response(model_name, per_prompt, params.logprobs)

    return app


def serve(backend: Backend, model_name: str, host: str = "127.0.0.1", port: int = 8000, *,
          insecure_no_api_key: bool = False, **app_options) -> None:
    """Serves `backend` until interrupted; `app_options` (api_key, limits) go to `create_app`.

    A host other than loopback needs `api_key`, or `insecure_no_api_key=True` to serve without one.
    """
    check_exposure(host, app_options.get("api_key"), insecure_no_api_key)
    uvicorn.run(create_app(backend, model_name, **app_options), host=host, port=port)
