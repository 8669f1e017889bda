"""Reward functions that reward tests name by import path ("tests.helpers.reward_functions:NAME")."""


def counts_keyword(prompt, completion, metadata):
    """How many times metadata["keyword"] occurs in the completion; None (cannot score) without a keyword."""
    keyword = metadata.get("keyword")
    if not keyword:
        return None
    return completion.count(keyword)


def answers_last_question(prompt, completion, metadata):
    """1.0 when the completion repeats the last user turn's final word, else 0.0 (it sees the prompt)."""
    word = prompt[-1]["content"].split()[-1].strip("?")
    return word in completion


def returns_text(prompt, completion, metadata):
    return "high"


NOT_CALLABLE = 3
