"""`alignkit generate`'s file path: each output row carries its prompt record's own fields (label, format,
reference answer) but never a second conversation, so a reward can score the generated file as it is."""
from __future__ import annotations

import json

from alignkit.data.formats import to_conversation
from alignkit.data.prompts import read_prompt_records
from alignkit.generation.backend import Completion, SamplingParams
from alignkit.generation.files import generate_file


class Echo:
    model_id = "echo"

    def chat(self, conversations, params):
        return [[Completion(f"{c[-1]['content']} #{j}") for j in range(params.n)] for c in conversations]

    def complete(self, prompts, params):
        raise AssertionError("conversations only")


def test_rows_carry_the_record_fields_and_read_back_as_the_prompt(tmp_path):
    src = tmp_path / "prompts.jsonl"
    rows = [{"messages": [{"role": "user", "content": "Shout hi"}, {"role": "assistant", "content": "HI"}],
             "format": "upper", "answer": "hi", "id": 7},
            {"instruction": "Say hi", "input": "", "output": "hi", "category": "greeting"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "gen.jsonl"
    assert generate_file(Echo(), read_prompt_records([str(src)]), str(out), SamplingParams(n=2, temperature=1.0),
                         progress=False) == 2
    first, second = [json.loads(line) for line in out.read_text().splitlines()]
    assert first["format"] == "upper" and first["answer"] == "hi" and first["id"] == 7
    assert first["reference"] == "HI"  # the trailing assistant turn, left out of the prompt
    assert first["source"].endswith("prompts.jsonl:1") and first["responses"] == ["Shout hi #0", "Shout hi #1"]
    # the alpaca record's own answer fields are not carried: the row reads as the prompt it answered
    assert second["category"] == "greeting" and not {"instruction", "input", "output"} & set(second)
    assert to_conversation(second, require_assistant=False) == [{"role": "user", "content": "Say hi"}]
