"""Serving: an OpenAI-compatible HTTP server over any generation `Backend` (`create_app`, `serve`;
`serve_model` loads a local model and serves it, as `alignkit serve` does),
and a background server for tests and notebooks (`start_in_background`). Names are imported on
first use (lazy_exports), so FastAPI loads only when a server is made.
"""
from alignkit.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "app": ("create_app", "serve"),
    "command": ("serve_model",),
    "background": ("BackgroundServer", "start_in_background"),
})
