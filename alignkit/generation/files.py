"""Prompts file in, responses file out: the body of `alignkit generate`."""
from __future__ import annotations

from typing import Callable

from alignkit.atomic_write import write_jsonl_atomic
from alignkit.data.formats import load_conversations
from alignkit.generation.backend import Backend, SamplingParams
from alignkit.generation.local import generate_texts


def read_prompts(path: str, *, skip_bad: bool = False):
    """Conversations to answer, one per record. A trailing assistant turn (a reference answer in an
    evaluation file) is dropped."""
    convs, report = load_conversations(path, skip_bad=skip_bad, require_assistant=False)
    prompts = []
    for conv in convs:
        messages = list(conv.messages)
        while messages and messages[-1]["role"] == "assistant":
            messages.pop()
        if not messages:
            from alignkit.data.errors import RecordError
            raise RecordError("messages", "no user turn to answer", path=conv.source, line=conv.line, unit=conv.unit)
        prompts.append((conv, messages))
    return prompts, report


def generate_file(backend: Backend, prompts: list, out_path: str, params: SamplingParams, *,
                  progress: bool = True, model_name: str | None = None) -> int:
    """Answer `prompts` (as `read_prompts` returns them: read before the model loads, so a bad prompts
    file costs no model load) into a JSONL file; returns the number of records written.

    Each record's `model` is `model_name` (what the user called the model, e.g. its folder: tables of
    win rates name models by it) or else the backend's cache id."""
    completions = generate_texts(backend, [m for _, m in prompts], params, progress=progress)
    rows = []
    for (conv, messages), outs in zip(prompts, completions):
        row = {"source": f"{conv.source}:{conv.line}", "messages": messages, "prompt": messages[-1]["content"],
               "response": outs[0].text, "finish_reason": outs[0].finish_reason,
               "model": model_name or backend.model_id}
        if len(outs) > 1:
            # Samples in sampling order, not a ranking: preference loaders need scores for them.
            row["responses"], row["ranked"] = [c.text for c in outs], False
        rows.append(row)
    write_jsonl_atomic(out_path, rows)
    return len(rows)


def run_generate(prompts_path: str, out_path: str, load_backend: Callable[[], Backend], params: SamplingParams, *,
                 progress: bool = True, model_name: str | None = None) -> int:
    """`alignkit generate`: answer a prompts file into a JSONL file; returns the number of records written.

    `load_backend()` is called only once the prompts are read, so a bad prompts file costs no model load.
    """
    prompts, _ = read_prompts(prompts_path)
    return generate_file(load_backend(), prompts, out_path, params, progress=progress, model_name=model_name)
