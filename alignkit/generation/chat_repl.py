"""An interactive chat in the terminal: the conversation grows turn by turn; /reset starts over."""
from __future__ import annotations

from alignkit.generation.backend import Backend, SamplingParams


def chat_loop(backend: Backend, params: SamplingParams, *, system: str | None = None, read=input, write=print) -> None:
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    write(f"chatting with {backend.model_id} (/reset clears the conversation, /quit or Ctrl-D leaves)")
    while True:
        try:
            line = read("you> ")
        except EOFError:
            write("")
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return
        if text == "/reset":
            history = history[:1] if system else []
            write("(conversation cleared)")
            continue
        history.append({"role": "user", "content": text})
        reply = backend.chat([history], params)[0][0]
        if reply.finish_reason == "error":
            write(f"[error: {reply.error}]")
            history.pop()
            continue
        history.append({"role": "assistant", "content": reply.text})
        write(f"bot> {reply.text}")
