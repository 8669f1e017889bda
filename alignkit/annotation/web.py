"""The annotation web app: server-rendered pages for people, a small JSON API for scripts.

Pages (cookie sign-in, forms with a csrf field, POST then redirect):
    GET  /login, POST /login, POST /logout
    GET  /                      the annotator's next item, with their progress
    POST /answer, /skip, /undo
    GET  /admin                 progress per annotator (admins only)
    GET  /arena, POST /arena    type a prompt; two hidden models answer
    GET  /arena/{id}, POST /arena/{id}/vote
API (`Authorization: Bearer <token>`, JSON):
    GET /api/next, POST /api/answer, POST /api/skip, POST /api/undo, GET /api/progress, GET /api/admin

Model names never reach an annotator before they vote: task items are shown without them, and an
arena battle names its models only once voted. The one script (static/annotate.js) adds keyboard
shortcuts; every page works with the mouse alone.
"""
from __future__ import annotations

import secrets
import time
from importlib import resources
from typing import Any

import jinja2
from markupsafe import Markup
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from alignkit.annotation.answers import AnswerError, canonical_answer, shown_order
from alignkit.annotation.arena import Arena, ArenaError
from alignkit.annotation.markdown import render_markdown
from alignkit.annotation.security import (COOKIE, HEADERS, NotSignedIn, api_annotator, check_form,
                                          check_same_origin, csrf_token, page_annotator)
from alignkit.annotation.store import Annotator, Store, StoreError
from alignkit.annotation.tasks import TaskItem

_STATIC = {"annotate.js": "text/javascript; charset=utf-8", "annotate.css": "text/css; charset=utf-8",
           "favicon.svg": "image/svg+xml"}
LETTERS = "abcdefghij"


def _templates() -> jinja2.Environment:
    folder = resources.files("alignkit.annotation").joinpath("templates")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(folder)), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["markdown"] = lambda text: Markup(render_markdown(text))  # sanitised: see markdown.py
    return env


def item_view(store: Store, annotator: Annotator, item: TaskItem) -> dict[str, Any]:
    """The item as this annotator sees it: responses in their shown order, without model names."""
    order = shown_order(store.seed, annotator.name, item.id, len(item.responses))
    return {"id": item.id, "kind": item.kind, "question": item.question, "prompt": item.prompt,
            "responses": [item.responses[index].content for index in order], "shown_order": order,
            "scale": list(item.scale) if item.scale else None, "rubric": item.rubric}


def form_answer(kind: str, form, count: int) -> dict:
    """The answer in shown positions from a page's form fields."""
    if kind == "pairwise":
        return {"choice": form.get("choice"), "reason": form.get("reason") or ""}
    if kind == "ranking":
        ranks = []
        for position in range(count):
            value = form.get(f"rank_{position}")
            if not value or not str(value).isdigit():
                raise AnswerError(f"rank_{position}: give every response a rank")
            ranks.append((int(value), position))
        if sorted(rank for rank, _ in ranks) != list(range(1, count + 1)):
            raise AnswerError(f"ranks: give each rank 1..{count} to exactly one response")
        return {"ranking": [position for _, position in sorted(ranks)]}
    scores = []
    for position in range(count):
        value = form.get(f"score_{position}")
        if not value or not str(value).lstrip("-").isdigit():
            raise AnswerError(f"score_{position}: give every response a score")
        scores.append(int(value))
    return {"scores": scores}


def create_app(store: Store, arena: Arena | None = None, *, title: str = "alignkit annotate") -> FastAPI:
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)
    env = _templates()

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.exception_handler(NotSignedIn)
    async def sign_in(request: Request, _: NotSignedIn):
        return page(request, "login.html", {"error": None}, status=401)

    def page(request: Request, name: str, context: dict, status: int = 200,
             annotator: Annotator | None = None) -> HTMLResponse:
        html = env.get_template(name).render(title=title, annotator=annotator, arena=arena is not None,
                                             csrf=csrf_token(store, request) if annotator else "", **context)
        return HTMLResponse(html, status_code=status)

    def back(to: str = "/") -> RedirectResponse:
        return RedirectResponse(to, status_code=303)

    async def signed_in_form(request: Request) -> tuple[Annotator, Any]:
        annotator = await run_in_threadpool(page_annotator, request, store)
        form = await request.form()
        check_form(request, store, form)
        return annotator, form

    # ------------------------------------------------------------------ sign-in

    @app.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request):
        return page(request, "login.html", {"error": None})

    @app.post("/login")
    async def login(request: Request):
        check_same_origin(request)
        form = await request.form()
        token = str(form.get("token") or "").strip()
        if not token or await run_in_threadpool(store.annotator_for, token) is None:
            return page(request, "login.html", {"error": "That token is not valid."}, status=401)
        response = back()
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                            max_age=30 * 24 * 3600)
        return response

    @app.post("/logout")
    async def logout(request: Request):
        await signed_in_form(request)
        response = back("/login")
        response.delete_cookie(COOKIE)
        return response

    @app.get("/static/{name}")
    async def static(name: str):
        # The app's own script, style sheet and icon: no data in them, so the sign-in page may load them too.
        if name not in _STATIC:
            raise HTTPException(404)
        body = resources.files("alignkit.annotation").joinpath("static", name).read_bytes()
        return Response(body, media_type=_STATIC[name])

    # ------------------------------------------------------------------ annotating

    def next_view(annotator: Annotator) -> tuple[dict | None, dict]:
        item_id = store.next_item(annotator)
        view = item_view(store, annotator, store.item(item_id)) if item_id else None
        return view, store.progress(annotator)

    @app.get("/", response_class=HTMLResponse)
    async def annotate_page(request: Request):
        annotator = await run_in_threadpool(page_annotator, request, store)
        view, progress = await run_in_threadpool(next_view, annotator)
        error = request.query_params.get("error")
        return page(request, "item.html", {"item": view, "progress": progress, "letters": LETTERS,
                                           "submission": secrets.token_urlsafe(12), "started": time.time(),
                                           "error": error}, annotator=annotator)

    def answer(annotator: Annotator, item_id: str, raw: Any, submission: str, seconds: float | None,
               shown_check: list[int] | None = None) -> tuple[int, bool]:
        item = store.item(item_id)
        shown = shown_order(store.seed, annotator.name, item.id, len(item.responses))
        if shown_check is not None and shown_check != shown:
            raise StoreError("the page was shown with another order; reload it")
        stored = canonical_answer(item, shown, raw)
        return store.record_vote(annotator, item.id, stored, shown, submission, seconds)

    @app.post("/answer")
    async def answer_form(request: Request):
        annotator, form = await signed_in_form(request)
        item_id, submission = str(form.get("item") or ""), str(form.get("submission") or "")
        try:
            item = await run_in_threadpool(store.item, item_id)
            raw = form_answer(item.kind, form, len(item.responses))
            shown = [int(p) for p in str(form.get("shown") or "").split(",") if p.isdigit()]
            started = float(form.get("started") or 0) or None
            seconds = round(time.time() - started, 3) if started else None
            await run_in_threadpool(answer, annotator, item_id, raw, submission or secrets.token_urlsafe(12),
                                    seconds, shown)
        except (AnswerError, StoreError) as error:
            return page(request, "error.html", {"error": str(error)}, status=409, annotator=annotator)
        return back()

    @app.post("/skip")
    async def skip_form(request: Request):
        annotator, form = await signed_in_form(request)
        try:
            await run_in_threadpool(store.skip, annotator, str(form.get("item") or ""))
        except StoreError as error:
            return page(request, "error.html", {"error": str(error)}, status=409, annotator=annotator)
        return back()

    @app.post("/undo")
    async def undo_form(request: Request):
        annotator, _ = await signed_in_form(request)
        await run_in_threadpool(store.undo, annotator)
        return back()

    @app.get("/admin", response_class=HTMLResponse)
    async def admin_page(request: Request):
        annotator = await run_in_threadpool(page_annotator, request, store)
        if not annotator.admin:
            raise HTTPException(403, "the admin page is for admin annotators (add-annotator --admin)")
        overview = await run_in_threadpool(store.overview)
        return page(request, "admin.html", {"overview": overview, "now": time.time()}, annotator=annotator)

    # ------------------------------------------------------------------ arena

    def need_arena() -> Arena:
        if arena is None:
            raise HTTPException(404, "this server has no arena (serve with --arena NAME=MODEL twice or more)")
        return arena

    @app.get("/arena", response_class=HTMLResponse)
    async def arena_page(request: Request):
        annotator = await run_in_threadpool(page_annotator, request, store)
        need_arena()
        return page(request, "arena.html", {"battle": None, "error": None}, annotator=annotator)

    @app.post("/arena")
    async def arena_ask(request: Request):
        annotator, form = await signed_in_form(request)
        contest = need_arena()
        prompt = str(form.get("prompt") or "")
        try:
            model_a, model_b, response_a, response_b = await run_in_threadpool(contest.battle, prompt)
        except ArenaError as error:
            return page(request, "arena.html", {"battle": None, "error": str(error)}, status=409, annotator=annotator)
        battle_id = await run_in_threadpool(store.add_battle, annotator, prompt, model_a, model_b, response_a,
                                            response_b)
        return back(f"/arena/{battle_id}")

    @app.get("/arena/{battle_id}", response_class=HTMLResponse)
    async def battle_page(request: Request, battle_id: int):
        annotator = await run_in_threadpool(page_annotator, request, store)
        need_arena()
        try:
            battle = await run_in_threadpool(store.battle, battle_id, annotator)
        except StoreError as error:
            raise HTTPException(404, str(error)) from None
        return page(request, "arena.html", {"battle": battle, "error": None, "submission": secrets.token_urlsafe(12)},
                    annotator=annotator)

    @app.post("/arena/{battle_id}/vote")
    async def battle_vote(request: Request, battle_id: int):
        annotator, form = await signed_in_form(request)
        need_arena()
        try:
            await run_in_threadpool(store.vote_battle, annotator, battle_id, str(form.get("winner") or ""),
                                    str(form.get("submission") or secrets.token_urlsafe(12)))
        except StoreError as error:
            return page(request, "error.html", {"error": str(error)}, status=409, annotator=annotator)
        return back(f"/arena/{battle_id}")

    # ------------------------------------------------------------------ JSON API

    @app.get("/api/next")
    def api_next(request: Request):
        annotator = api_annotator(request, store)
        view, progress = next_view(annotator)
        return {"item": view, "progress": progress}

    @app.post("/api/answer")
    async def api_answer(request: Request):
        annotator = await run_in_threadpool(api_annotator, request, store)
        body = await _json_body(request)
        item_id, submission = body.get("item"), body.get("submission")
        if not isinstance(item_id, str) or not isinstance(submission, str) or not submission:
            raise HTTPException(422, "expected {item: str, submission: str (unique per answer), answer: {...}}")
        seconds = body.get("seconds") if isinstance(body.get("seconds"), (int, float)) else None
        try:
            vote_id, new = await run_in_threadpool(answer, annotator, item_id, body.get("answer"), submission, seconds)
        except (AnswerError, StoreError) as error:
            return JSONResponse({"detail": str(error)}, status_code=409)
        return {"vote": vote_id, "new": new}

    @app.post("/api/skip")
    async def api_skip(request: Request):
        annotator = await run_in_threadpool(api_annotator, request, store)
        body = await _json_body(request)
        try:
            await run_in_threadpool(store.skip, annotator, str(body.get("item") or ""))
        except StoreError as error:
            return JSONResponse({"detail": str(error)}, status_code=409)
        return {"skipped": body.get("item")}

    @app.post("/api/undo")
    def api_undo(request: Request):
        annotator = api_annotator(request, store)
        return {"reopened": store.undo(annotator)}

    @app.get("/api/progress")
    def api_progress(request: Request):
        return store.progress(api_annotator(request, store))

    @app.get("/api/admin")
    def api_admin(request: Request):
        if not api_annotator(request, store).admin:
            raise HTTPException(403, "admin annotators only")
        return store.overview()

    return app


async def _json_body(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(422, "the body must be JSON") from None
    if not isinstance(body, dict):
        raise HTTPException(422, "the body must be a JSON object")
    return body
