"""Prompts that turn a chat model into a judge.

Every prompt is a single user message: some chat templates (Gemma, older Mistral) reject or fold a
system turn, and a lone user turn renders the same everywhere. Each prompt ends by stating the exact
output format that `verdicts.py` parses, so the two files change together.

Texts are shown between fixed `[Name begins]` / `[Name ends]` lines. The texts are untrusted (a
candidate output could write `[Output A ends]`, open a forged block and add its own instructions), so
inside a block every bracketed phrase ending in "begins" or "ends" (any case, spacing, or a
look-alike bracket) has its brackets turned into parentheses: `(Output A ends)`. A rendered prompt
therefore has exactly one begin and one end line per block, and each text lies wholly inside its
own. Texts without such phrases render unchanged, so prompts, and the judge cache keyed by them,
stay as they were; the change is deterministic, so a rerun hits the same cache entries.

Principles (`principles=`, e.g. the written rules an AI-feedback labeller judges by) are shown as a
numbered list of their own, after the built-in RULES when those are on, so instruction following still
comes first; without `rules` they are the only rules stated. They are the user's own text, not a
candidate's, so they are shown as written (whitespace inside one folded to single spaces, so each
stays one numbered line). A prompt without principles renders exactly as it did before they existed.
"""
from __future__ import annotations

import re
from typing import Sequence

from alignkit.generation.backend import Message

RULES = """Decide using these rules, in this order of importance:
1. Following the instruction comes first. An output that does what was asked beats one that does not,
   however polished, detailed or pleasant the other one is.
2. The output should do what was asked: nothing less and nothing more. Missing parts, ignored
   constraints (length, format, language, number of items) and unrequested additions all count against it.
3. Do not let presentation sway you: which output is shown first, and how long each output is,
   must not influence the decision.
4. Only when both outputs follow the instruction equally well, prefer the one that is more accurate,
   helpful and harmless."""

_EXPLAIN = {
    "none": "Reply with the verdict line only.",
    "brief": "First explain your decision in one to three sentences, then give the verdict line.",
    "steps": ("Think it through before deciding: say what the instruction requires, check each output "
              "against those requirements one by one, and compare them. Then give the verdict line."),
}


# Opening and closing brackets a judge would read as "[": ASCII, fullwidth, and CJK/math look-alikes.
_OPEN, _CLOSE = "[\uff3b\u3010\u3014\u301a\u27e6", "]\uff3d\u3011\u3015\u301b\u27e7"
_MARKER_LIKE = re.compile(rf"[{re.escape(_OPEN)}]([^{re.escape(_OPEN + _CLOSE)}\n]{{0,100}}?\b(?:begins|ends))\s*"
                          rf"[{re.escape(_CLOSE)}]", re.IGNORECASE)


def defuse_markers(text: str) -> str:
    """`text` with every marker-like `[... begins]` / `[... ends]` turned into `(... begins)` / `(... ends)`."""
    return _MARKER_LIKE.sub(lambda match: f"({match.group(1)})", text)


def _block(name: str, text: str) -> str:
    return f"[{name} begins]\n{defuse_markers(text)}\n[{name} ends]"


def _verdict_format(allow_tie: bool) -> str:
    choices = "`Verdict: A` or `Verdict: B`"
    if allow_tie:
        choices = "`Verdict: A`, `Verdict: B`, or `Verdict: tie` if neither output is better"
    return f"Finish your reply with one line that reads exactly {choices}."


def _principles_block(principles: Sequence[str]) -> str:
    if isinstance(principles, str):  # a lone string would be shown one character per line
        raise ValueError("principles must be a sequence of strings, not one string")
    lines = []
    for number, principle in enumerate(principles, 1):
        if not isinstance(principle, str) or not principle.strip():
            raise ValueError(f"principles[{number - 1}] must be a non-empty string, got {principle!r}")
        lines.append(f"{number}. {' '.join(principle.split())}")
    return "Judge the outputs against these principles:\n" + "\n".join(lines)


def _rules_parts(rules: bool, principles: Sequence[str]) -> list[str]:
    """The rules a judging prompt states: RULES when asked for, then the principles when there are any."""
    return ([RULES] if rules else []) + ([_principles_block(principles)] if len(principles) else [])


def _user(content: str) -> list[Message]:
    return [{"role": "user", "content": content}]


def pairwise_prompt(instruction: str, output_a: str, output_b: str, *, rules: bool = False,
                    explain: str = "none", metrics: str | None = None, reference: str | None = None,
                    allow_tie: bool = False, principles: Sequence[str] = ()) -> list[Message]:
    """Ask which of two outputs (shown as A and B) better carries out `instruction`.

    `explain` is "none", "brief" (a short rationale, used by the swap strategy) or "steps" (chain of
    thought). `metrics` and `reference` are texts the judge generated earlier for this instruction.
    `principles` are shown as numbered rules to judge by (see the module docstring).
    """
    if explain not in _EXPLAIN:
        raise ValueError(f"explain must be one of {sorted(_EXPLAIN)}, got {explain!r}")
    parts = ["You are judging two AI assistant outputs written in reply to the same instruction. "
             "Pick the output that carries out the instruction better."]
    parts += _rules_parts(rules, principles)
    parts.append(_block("Instruction", instruction))
    parts.append(_block("Output A", output_a))
    parts.append(_block("Output B", output_b))
    if metrics is not None:
        parts.append("Questions that a good output to this instruction should answer well. "
                     "Use them in your comparison:\n" + _block("Questions", metrics))
    if reference is not None:
        parts.append("A reference output written independently for this instruction. It may itself be "
                     "imperfect; use it to check what a correct output contains, not as the only "
                     "acceptable wording:\n" + _block("Reference output", reference))
    parts.append(_EXPLAIN[explain] + " " + _verdict_format(allow_tie))
    return _user("\n\n".join(parts))


def metrics_prompt(instruction: str) -> list[Message]:
    """Ask the judge for up to three questions specific to `instruction` that separate good outputs from bad."""
    return _user(
        "You will later compare outputs that AI assistants wrote for the instruction below. Before that, "
        "write at most three short questions, specific to this instruction, whose answers tell a good "
        "output from a bad one (for example: does it respect a stated constraint, is a required fact "
        "correct). Write one question per line, numbered, and nothing else.\n\n"
        + _block("Instruction", instruction))


def reference_prompt(instruction: str) -> list[Message]:
    """Ask the judge to carry out `instruction` itself, to serve later as a reference output."""
    return _user("Carry out the instruction below as well as you can. Reply with your output only.\n\n"
                 + _block("Instruction", instruction))


def swap_decision_prompt(instruction: str, output_a: str, output_b: str, rationale_this_order: str,
                         rationale_other_order: str, *, rules: bool = False,
                         allow_tie: bool = False, principles: Sequence[str] = ()) -> list[Message]:
    """Final call of the swap strategy: two earlier judgments disagreed; show both rationales and decide."""
    parts = ["You are judging two AI assistant outputs written in reply to the same instruction. "
             "Two earlier evaluations of these outputs reached opposite conclusions. Read both "
             "evaluations, work out which one reasons correctly, and give the final decision."]
    parts += _rules_parts(rules, principles)
    parts.append(_block("Instruction", instruction))
    parts.append(_block("Output A", output_a))
    parts.append(_block("Output B", output_b))
    parts.append("Evaluation 1 saw the outputs labelled as above:\n"
                 + _block("Evaluation 1", rationale_this_order))
    parts.append("Evaluation 2 saw the outputs with the labels exchanged: what it calls Output A is "
                 "Output B above, and what it calls Output B is Output A above.\n"
                 + _block("Evaluation 2", rationale_other_order))
    parts.append("Explain briefly which evaluation is right and why, using the labels A and B as shown "
                 "above. " + _verdict_format(allow_tie))
    return _user("\n\n".join(parts))


def single_grade_prompt(questions: Sequence[str], answers: Sequence[str],
                        references: Sequence[str] | None = None) -> list[Message]:
    """Ask for a 1-10 rating of the last assistant answer in a (possibly multi-turn) conversation.

    `questions[i]` is user turn i and `answers[i]` the assistant's reply; the last answer is graded,
    the earlier turns are context. `references` holds a reference answer per turn when available.
    """
    if len(questions) != len(answers) or not questions:
        raise ValueError(f"need one answer per question, got {len(questions)} questions and {len(answers)} answers")
    last = len(questions) - 1
    turns = []
    for i, (question, answer) in enumerate(zip(questions, answers)):
        turns.append(_block(f"User turn {i + 1}", question))
        turns.append(_block(f"Assistant turn {i + 1}", answer))
    focus = (f"Grade only the assistant's reply in turn {last + 1}; earlier turns are context it should "
             "take into account." if last else "Grade the assistant's reply.")
    parts = ["You are grading the quality of an AI assistant's reply in the conversation below. Consider "
             "whether it does what the user asked, and its correctness, helpfulness, depth and clarity. "
             + focus, "\n\n".join(turns)]
    if references is not None:
        parts.append("A reference answer for the graded turn, known to be correct. Compare the "
                     "assistant's reply with it and treat mistakes harshly:\n"
                     + _block("Reference answer", references[last]))
    parts.append("Explain your grade in a few sentences. Finish your reply with one line that reads "
                 "exactly `Rating: N`, where N is a whole number from 1 (useless) to 10 (excellent).")
    return _user("\n\n".join(parts))


def rubric_prompt(instruction: str, response: str, rubric: str, reference: str | None = None) -> list[Message]:
    """Ask for a 1-5 score of `response` against a user-written `rubric`."""
    parts = ["You are grading an AI assistant's response to an instruction against the rubric below. "
             "Apply the rubric as written; do not substitute your own criteria.",
             _block("Instruction", instruction), _block("Response", response), _block("Rubric", rubric)]
    if reference is not None:
        parts.append("A reference response that would earn the top score:\n"
                     + _block("Reference response", reference))
    parts.append("Explain in a few sentences how the response meets or misses the rubric. Finish your "
                 "reply with one line that reads exactly `Score: N`, where N is a whole number from 1 to 5.")
    return _user("\n\n".join(parts))
