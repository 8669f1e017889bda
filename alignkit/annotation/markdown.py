"""Model output as HTML that cannot run anything: Markdown rendered, then sanitised.

Two layers, so that one mistake is not enough. markdown-it-py renders CommonMark (plus tables and
strikethrough) with raw HTML turned off, so a `<script>` or `<img onerror=...>` in a response comes out
as visible text, and it refuses `javascript:` links. nh3 (the ammonia sanitiser) then keeps only the
tags and attributes Markdown itself produces, and only http, https and mailto links. The page's
Content-Security-Policy forbids inline scripts as a third layer.
"""
from __future__ import annotations

import nh3
from markdown_it import MarkdownIt

_RENDERER = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
    ["table", "strikethrough"])
_TAGS = {"p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "s", "del", "code", "pre",
         "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td"}
# No style attributes: the page's policy refuses inline styles, so they would only be noise.
_ATTRIBUTES = {"a": {"href", "title"}, "code": {"class"}, "ol": {"start"}}


def render_markdown(text: str) -> str:
    """Safe HTML for `text`. Images are dropped (they could fetch from anywhere); links open nothing
    on their own and carry rel="noopener noreferrer nofollow"."""
    html = _RENDERER.render(text)
    return nh3.clean(html, tags=_TAGS, attributes=_ATTRIBUTES, url_schemes={"http", "https", "mailto"},
                     link_rel="noopener noreferrer nofollow", strip_comments=True)
