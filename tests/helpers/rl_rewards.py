"""Rewards for RL run tests, named by import path ("tests.helpers.rl_rewards:NAME")."""


def even_first_char(prompt, completion, metadata):
    """1.0 when the completion's first character has an even code point: a random tiny model starts
    roughly half its completions that way, so a policy gradient has a signal from the first step."""
    return float(bool(completion) and ord(completion[0]) % 2 == 0)


def completion_length(prompt, completion, metadata):
    """The completion's length in characters: differs between most samples."""
    return float(len(completion))
