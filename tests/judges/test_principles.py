"""Principles in the pairwise judge: shown as numbered rules, passed through JudgeConfig, absent = unchanged."""
from __future__ import annotations

import pytest

from alignkit.generation.backend import Completion
from alignkit.judges import RULES, JudgeConfig, judge_pairs, pairwise_prompt, swap_decision_prompt

PRINCIPLES = ("Prefer the output that admits what it does not know.",
              "Prefer the output that is  kind\nto the reader.")


class Recorder:
    """Replies with `reply(prompt)`; keeps every prompt it was shown."""

    def __init__(self, reply):
        self.reply = reply
        self.model_id = "recorder"
        self.prompts: list[str] = []

    def chat(self, conversations, params):
        self.prompts += [c[-1]["content"] for c in conversations]
        return [[Completion(self.reply(c[-1]["content"]))] for c in conversations]


def test_principles_are_numbered_rules_after_the_built_in_ones():
    text = pairwise_prompt("q", "x", "y", rules=True, principles=PRINCIPLES)[0]["content"]
    listed = ("Judge the outputs against these principles:\n"
              "1. Prefer the output that admits what it does not know.\n"
              "2. Prefer the output that is kind to the reader.")  # whitespace folded: one line each
    assert listed in text
    assert text.index(RULES) < text.index(listed) < text.index("[Instruction begins]")
    alone = pairwise_prompt("q", "x", "y", principles=PRINCIPLES)[0]["content"]
    assert listed in alone and RULES not in alone


def test_no_principles_render_byte_for_byte_as_before():
    for rules in (False, True):
        assert pairwise_prompt("q", "x", "y", rules=rules, principles=()) == pairwise_prompt("q", "x", "y", rules=rules)
        assert swap_decision_prompt("q", "x", "y", "r1", "r2", rules=rules, principles=[]) == \
            swap_decision_prompt("q", "x", "y", "r1", "r2", rules=rules)
    assert "principles" not in pairwise_prompt("q", "x", "y", rules=True)[0]["content"]


@pytest.mark.parametrize("bad", ["one string", ["fine", "  "], ["fine", 3]])
def test_bad_principles_are_refused(bad):
    with pytest.raises(ValueError, match="principles"):
        pairwise_prompt("q", "x", "y", principles=bad)
    with pytest.raises(ValueError, match="principles"):
        JudgeConfig(principles=bad)


def test_judge_config_principles_reach_every_verdict_prompt_and_the_swap_decision():
    config = JudgeConfig(strategy="swap", principles=list(PRINCIPLES))
    assert config.principles == PRINCIPLES  # a list is kept as a tuple: the frozen config stays hashable
    # Always "A": the two orders disagree, so the swap strategy makes its deciding calls too.
    judge = Recorder(lambda prompt: "Because.\nVerdict: A")
    judge_pairs(judge, [("q", "x", "y")], config)
    assert len(judge.prompts) == 4  # two orders, then one deciding call per order
    assert all("1. Prefer the output that admits" in prompt for prompt in judge.prompts)
    assert sum("earlier evaluations" in prompt for prompt in judge.prompts) == 2


def test_metrics_prompts_do_not_show_principles():
    judge = Recorder(lambda prompt: "1. Is it right?" if "[Output A begins]" not in prompt else "Verdict: B")
    judge_pairs(judge, [("q", "x", "y")], JudgeConfig(strategy="metrics", principles=PRINCIPLES))
    asked_for_metrics = [p for p in judge.prompts if "[Output A begins]" not in p]
    assert len(asked_for_metrics) == 1 and "principles" not in asked_for_metrics[0]
    assert all("principles" in p for p in judge.prompts if "[Output A begins]" in p)
