"""Pairs, rankings and feedback to token sequences: what every preference objective trains on.

An example holds the responses of one prompt, each as prompt + response token ids with labels on
the response only, fitted to max_length by the policy SFT uses too (lengths.py). Records become
build_examples items first (`pair_items`, `ranking_items`, `feedback_items`), so one builder
serves every kind of preference data.
"""
from __future__ import annotations

from dataclasses import dataclass

from alignkit.data.chat import IGNORE, TemplateError, TokenSeq, tokenize_conversation, tokenize_prompt
from alignkit.data.errors import RecordError, SkipReport
from alignkit.data.lengths import LengthReport
from alignkit.data.preference import Feedback


@dataclass
class PrefExample:
    """Responses of one prompt as token sequences; what every preference objective trains on.

    pairs: [chosen, rejected]; rankings: best first; KTO: [completion, a completion of another
    prompt] (the second only feeds KTO's KL baseline).
    """

    sequences: list[TokenSeq]
    reference: list[float] | None = None  # summed reference log-prob per sequence, once attached
    margin: float | None = None  # how much better chosen is, when the data says (reward models)
    desirable: bool | None = None  # KTO label
    source: str = ""
    line: int = 0


def tokenize_response(tokenizer, prompt: list[dict], response: list[dict]) -> TokenSeq:
    """Token ids of prompt + response with labels on the response's assistant turns only."""
    tok = tokenize_conversation(tokenizer, prompt + response, train_on="all_assistant")
    ids, labels = tok.input_ids, tok.labels
    if any(message["role"] == "assistant" for message in prompt):
        # Earlier assistant turns belong to the prompt: they are context, not what is compared.
        prompt_ids = tokenize_prompt(tokenizer, prompt)
        if ids[:len(prompt_ids)] != prompt_ids:
            raise TemplateError("the prompt tokenizes differently alone than followed by the response, so "
                                "its assistant turns cannot be told apart from the response's")
        labels = [IGNORE] * len(prompt_ids) + labels[len(prompt_ids):]
    return ids, labels


def build_examples(items, tokenizer, *, max_length: int, overlong: str = "truncate", skip_bad: bool = False,
                   report: SkipReport | None = None) -> tuple[list[PrefExample], LengthReport]:
    """Tokenize (prompt, responses, margin, desirable, source, line, unit) tuples into examples.

    An example any of whose responses is dropped for length is dropped whole (and counted in the
    returned LengthReport); a template failure is a RecordError at the record's file and line.
    """
    lengths = LengthReport(max_length, overlong)
    examples = []
    for prompt, responses, margin, desirable, source, line, unit in items:
        try:
            sequences = [tokenize_response(tokenizer, prompt, response) for response in responses]
        except TemplateError as e:
            error = RecordError("prompt", str(e), path=source, line=line, unit=unit)
            if not skip_bad:
                raise error from None
            if report is not None:
                report.add(error)
            continue
        fitted = lengths.fit(sequences, f"{source}:{line}", over_reason="over max_length",
                             empty_reason="no response token left after truncation")
        if fitted is None:
            continue
        examples.append(PrefExample(fitted, margin=margin, desirable=desirable, source=source, line=line))
    return examples, lengths


def pair_items(pairs):
    return [(p.prompt, [p.chosen, p.rejected], p.margin, None, p.source, p.line, p.unit) for p in pairs]


def ranking_items(rankings):
    return [(r.prompt, [r.responses[i] for i in r.best_first()], None, None, r.source, r.line, r.unit)
            for r in rankings]


def feedback_items(feedback: list[Feedback]) -> list[tuple]:
    """build_examples items for KTO: [completion, completion of the next example with another prompt].

    KTO's baseline z0 estimates KL(policy || reference) from completions paired with the *wrong*
    prompt; fixing that partner here, when the data is built, lets its reference log-prob be
    precomputed and cached like any other.
    """
    count = len(feedback)
    items = []
    for index, item in enumerate(feedback):
        partner = next((feedback[(index + step) % count] for step in range(1, count)
                        if feedback[(index + step) % count].prompt != item.prompt), None)
        if partner is None:
            raise ValueError("KTO needs feedback on at least two different prompts (its KL baseline pairs each "
                             f"completion with another prompt); {item.source} has only one")
        items.append((item.prompt, [item.completion, partner.completion], None, item.desirable,
                      item.source, item.line, item.unit))
    return items
