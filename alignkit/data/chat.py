"""Render conversations with the tokenizer's chat template and mark the tokens to train on.

Templates rarely carry `{% generation %}` markers, so assistant spans are found by rendering
growing prefixes of the conversation: the text added by an assistant turn (its content and the
template's end-of-turn marker) is what the model learns to produce. Tokens are then located by
character offsets in one tokenization of the full text, which is what the model sees.
"""
from __future__ import annotations

from dataclasses import dataclass

IGNORE = -100
TRAIN_ON = ("all_assistant", "last_assistant")  # which assistant turns tokenize_conversation trains on
TokenSeq = tuple[list[int], list[int]]  # (input_ids, labels), labels unshifted with IGNORE outside completions


class TemplateError(ValueError):
    pass


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]  # the token itself where trained, IGNORE elsewhere (not shifted)

    @property
    def num_targets(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def _render(tokenizer, messages, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character span [start, end) of every assistant turn."""
    full = _render(tokenizer, messages, False)
    spans = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], True) if i else ""
        through = _render(tokenizer, messages[: i + 1], False)
        if not full.startswith(before) or not full.startswith(through) or len(through) < len(before):
            raise TemplateError(
                "the chat template renders a conversation differently from its prefixes, so assistant "
                f"turns cannot be located (turn {i}); use a template whose rendering grows turn by turn")
        start = len(before)
        # Some templates put a separator between the generation prompt and the content; the span
        # still must contain the content.
        if msg["content"] and msg["content"].strip() not in full[start:len(through)]:
            raise TemplateError(f"assistant turn {i} content not found where the template put it")
        spans.append((start, len(through)))
    return full, spans


def _bos_prefix(tokenizer, text: str) -> list[int]:
    """A BOS to prepend only when the tokenizer wants one and the template did not render it."""
    bos = tokenizer.bos_token
    if not bos or tokenizer.bos_token_id is None:
        return []
    probe = tokenizer("x", add_special_tokens=True).input_ids
    wants_bos = bool(probe) and probe[0] == tokenizer.bos_token_id
    return [tokenizer.bos_token_id] if wants_bos and not text.startswith(bos) else []


def encode_text(tokenizer, text: str) -> list[int]:
    """Tokenize rendered template text without doubling BOS."""
    return _bos_prefix(tokenizer, text) + tokenizer(text, add_special_tokens=False).input_ids


def tokenize_conversation(tokenizer, messages: list[dict], *, train_on: str = "all_assistant") -> Tokenized:
    """Input ids and labels training on assistant turns (`all_assistant`) or only the last one (`last_assistant`)."""
    text, spans = assistant_spans(tokenizer, messages)
    if train_on == "last_assistant":
        spans = spans[-1:]
    elif train_on not in TRAIN_ON:
        raise ValueError(f"train_on must be one of {', '.join(TRAIN_ON)}, not {train_on!r}")
    if not spans:
        raise TemplateError("conversation has no assistant turn to train on")
    prefix = _bos_prefix(tokenizer, text)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE] * len(ids)
    k = 0
    for t, (s, e) in enumerate(offsets):
        while k < len(spans) and s >= spans[k][1]:
            k += 1
        if k < len(spans) and s >= spans[k][0] and e > s:
            labels[t] = ids[t]
    return Tokenized(prefix + ids, [IGNORE] * len(prefix) + labels)


def tokenize_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Prompt ids ending with the generation prompt, for sampling or scoring a continuation."""
    return encode_text(tokenizer, _render(tokenizer, messages, True))
