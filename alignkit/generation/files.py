"""Prompts file in, responses file out: the body of `alignkit generate`."""
from __future__ import annotations

from typing import Callable

from alignkit.atomic_write import write_jsonl_atomic
from alignkit.data.prompts import PromptRecord, read_prompt_records
from alignkit.generation.backend import Backend, SamplingParams
from alignkit.generation.local import generate_texts


def generate_file(backend: Backend, prompts: list[PromptRecord], out_path: str, params: SamplingParams, *,
                  progress: bool = True, model_name: str | None = None) -> int:
    """Answer `prompts` (`data.prompts.read_prompt_records`: read before the model loads, so a bad prompts
    file costs no model load) into a JSONL file; returns the number of records written. Each row carries
    its prompt record's own fields (a label, a reference answer, the format asked for), so a reward can
    score the file as it is.

    Each record's `model` is `model_name` (what the user called the model, e.g. its folder: tables of
    win rates name models by it) or else the backend's cache id."""
    completions = generate_texts(backend, [p.messages for p in prompts], params, progress=progress)
    rows = []
    for prompt, outs in zip(prompts, completions):
        messages = prompt.messages
        row = {**prompt.record_fields(), "source": prompt.metadata.get("source", ""), "messages": messages,
               "prompt": messages[-1]["content"], "response": outs[0].text, "finish_reason": outs[0].finish_reason,
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
    prompts = read_prompt_records([prompts_path])
    return generate_file(load_backend(), prompts, out_path, params, progress=progress, model_name=model_name)
