"""A judge backend whose verdicts and grades follow a rule the test controls."""
import re

from alignkit.generation.backend import Completion

_BLOCK = re.compile(r"\[Output (A|B) begins\]\n(.*?)\n\[Output \1 ends\]", re.S)
_GRADED = re.compile(r"\[(?:Assistant turn \d+|Response) begins\]\n(.*?)\n\[(?:Assistant turn \d+|Response) ends\]", re.S)


def shown_outputs(prompt: str) -> dict[str, str]:
    """{"A": text, "B": text} as the pairwise judge prompt shows them."""
    return dict(_BLOCK.findall(prompt))


class ScriptedJudge:
    """A Backend whose replies follow a rule: "good" prefers the output with GOOD in it (B when neither has it),
    "garbage" never gives a verdict, "grader" rates answers with GOOD 8 and others 2 (Rating/Score lines)."""

    def __init__(self, mode: str):
        self.mode = mode
        self.model_id = mode
        self.prompts_seen = 0

    def reply(self, prompt: str) -> str:
        if self.mode == "garbage":
            return "Both outputs have their charms; I really cannot say."
        if self.mode == "grader":
            graded = _GRADED.findall(prompt)[-1]
            label = "Score" if "Score: N" in prompt else "Rating"
            return f"Reasons.\n{label}: {8 if 'GOOD' in graded else 2}"
        return "Verdict: A" if "GOOD" in shown_outputs(prompt)["A"] else "Verdict: B"

    def chat(self, conversations, params):
        self.prompts_seen += len(conversations)
        return [[Completion(self.reply(c[-1]["content"]))] for c in conversations]

    def complete(self, prompts, params):
        return [[Completion(self.reply(p))] for p in prompts]
