"""Run an ASGI app with uvicorn in a background thread of this process.

Handy for tests and notebooks: serve a local model and talk to it over real HTTP, e.g.
with `OpenAIBackend(base_url=server.base_url + "/v1")`.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import uvicorn


@dataclass
class BackgroundServer:
    server: uvicorn.Server
    thread: threading.Thread
    base_url: str  # e.g. "http://127.0.0.1:53817", without the /v1

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> "BackgroundServer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def start_in_background(app, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 30.0) -> BackgroundServer:
    """Starts serving `app` and returns once it accepts connections. Port 0 picks a free port."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{host}:{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"uvicorn exited while starting on {host}:{port} (see its log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"uvicorn did not start on {host}:{port} within {startup_timeout} s")
        time.sleep(0.01)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    return BackgroundServer(server, thread, f"http://{host}:{bound_port}")
