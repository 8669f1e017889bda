"""Who is asking, and may they: tokens, cross-site request checks and the headers every answer carries.

- Every page and API call needs an annotator's token: browsers keep it in an HttpOnly, SameSite=Strict
  cookie set by the sign-in form; scripts send `Authorization: Bearer <token>`.
- Forms post with the cookie, so each POST must carry the form's `csrf` field, an HMAC of the token
  under the store's secret that another site cannot know, and must not come from another origin
  (`Origin`, `Sec-Fetch-Site`). The JSON API takes the bearer header only, which a cross-site page
  cannot set, so it needs no such field.
- The Content-Security-Policy allows scripts and styles from this server's files only: even a
  sanitiser bug could not run an inline script or handler taken from model output.
"""
from __future__ import annotations

import hashlib
import hmac

from fastapi import HTTPException, Request

from alignkit.annotation.store import Annotator, Store

COOKIE = "alignkit_annotate"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "base-uri 'none'; frame-ancestors 'none'")
# Referrer-Policy must keep same-origin referrers: with no-referrer, Chromium sends `Origin: null` on form
# posts, which check_same_origin could not tell from a cross-site post.
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           "Referrer-Policy": "same-origin", "Cache-Control": "no-store"}


class NotSignedIn(Exception):
    """No valid token: pages answer with the sign-in form, the API with 401."""


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def api_annotator(request: Request, store: Store) -> Annotator:
    token = bearer_token(request)
    annotator = store.annotator_for(token) if token else None
    if annotator is None:
        raise HTTPException(401, "a valid token is required: Authorization: Bearer <token>",
                            headers={"WWW-Authenticate": "Bearer"})
    return annotator


def page_annotator(request: Request, store: Store) -> Annotator:
    token = request.cookies.get(COOKIE) or bearer_token(request)
    annotator = store.annotator_for(token) if token else None
    if annotator is None:
        raise NotSignedIn()
    return annotator


def csrf_token(store: Store, request: Request) -> str:
    token = request.cookies.get(COOKIE) or bearer_token(request) or ""
    return hmac.new(store.secret, b"csrf:" + token.encode("utf-8"), hashlib.sha256).hexdigest()


def check_same_origin(request: Request) -> None:
    """Refuses a POST that a browser says came from another site."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise HTTPException(403, f"cross-site request refused (Sec-Fetch-Site: {site})")
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
        raise HTTPException(403, f"cross-site request refused (Origin: {origin})")


def check_form(request: Request, store: Store, form) -> None:
    check_same_origin(request)
    sent = form.get("csrf")
    if not isinstance(sent, str) or not hmac.compare_digest(sent, csrf_token(store, request)):
        raise HTTPException(403, "the form's csrf field is missing or wrong; reload the page")
