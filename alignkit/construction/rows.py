"""The two layouts every data command writes, so `alignkit sft` and `alignkit dpo` read the outputs as they are.

SFT data: OpenAI `messages` (the prompt's turns, then the assistant's answer). Preference data: TRL's
conversational prompt/chosen/rejected. Both keep the job's own fields beside them (the unit's id, where
it came from, a judge's rationale), which the readers ignore.
"""
from __future__ import annotations


def sft_row(prompt: list[dict], answer: str, **fields) -> dict:
    return {"messages": [*prompt, {"role": "assistant", "content": answer}], **fields}


def pair_row(prompt: list[dict], chosen: str, rejected: str, **fields) -> dict:
    return {"prompt": list(prompt), "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], **fields}


def user_turn(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]
