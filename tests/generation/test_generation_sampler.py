"""LocalBackend's sampler draws from the right distribution, row by row, and sharing a prompt's cache
among its samples changes nothing but the time."""
import functools
import math

import pytest
import torch

from alignkit.generation.backend import SamplingParams
from alignkit.generation.local import LocalBackend, _SeededSampler
from alignkit.models.tiny import tiny_tokenizer
from tests.helpers.generation import CONVERSATIONS, sharp_model

PROBS = [0.5, 0.3, 0.15, 0.05, 0.0]


def draw(seeds: list[int], steps: int = 1, probs=PROBS) -> list[list[int]]:
    """Each row's picks over `steps` calls, every row with the same distribution."""
    sampler = _SeededSampler(seeds)
    scores = torch.tensor(probs).log().expand(len(seeds), -1)
    picks = []
    for _ in range(steps):
        forced = sampler(torch.zeros((len(seeds), 1), dtype=torch.long), scores)
        assert bool((forced.max(-1).values == 0).all()) and int((forced == 0).sum()) == len(seeds)
        picks.append(forced.argmax(-1).tolist())
    return [list(row) for row in zip(*picks)]


def test_draws_follow_the_distribution_and_never_pick_impossible_tokens():
    n = 20_000
    picks = [row[0] for row in draw(list(range(n)))]
    for token, p in enumerate(PROBS):
        frequency = picks.count(token) / n
        assert abs(frequency - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-9, (token, frequency, p)


def test_a_rows_draws_depend_on_its_seed_alone():
    alone = draw([2], steps=6)[0]
    assert draw([7, 2, 11], steps=6)[1] == alone
    assert draw([2, 2], steps=6) == [alone, alone]
    assert draw([3], steps=6)[0] != alone


def test_a_certain_token_is_always_drawn():
    assert draw(list(range(50)), probs=[0.0, 0.0, 1.0, 0.0]) == [[2]] * 50


@pytest.fixture(scope="module")
def chatml():
    tokenizer = tiny_tokenizer("chatml")
    return tokenizer, sharp_model(tokenizer)


@pytest.mark.parametrize("batch_size", [9, 4])  # 4: a prompt's samples split over two batches
def test_shared_prompt_cache_gives_the_same_samples(chatml, batch_size):
    tokenizer, model = chatml
    params = SamplingParams(max_tokens=10, temperature=1.0, n=3, seed=11, return_tokens=True)
    shared = LocalBackend(model, tokenizer, batch_size=batch_size)
    prefills = []
    forward = model.forward

    @functools.wraps(forward)  # generate reads forward's signature to pass position ids
    def spy(*args, **kwargs):
        if kwargs["input_ids"].shape[1] > 1:
            prefills.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    model.forward = spy
    try:
        with_cache = shared.chat(CONVERSATIONS[:3], params)
    finally:
        del model.forward
    # One forward over the prompts per batch, one row per distinct prompt in it.
    assert sum(prefills) < 9 and len(prefills) == math.ceil(9 / batch_size)
    unshared = LocalBackend(model, tokenizer, batch_size=batch_size)
    unshared._shared_prompt_cache = lambda *args: None
    without = unshared.chat(CONVERSATIONS[:3], params)
    for samples_a, samples_b in zip(with_cache, without, strict=True):
        for a, b in zip(samples_a, samples_b, strict=True):
            assert (a.token_ids, a.text, a.finish_reason) == (b.token_ids, b.text, b.finish_reason)
            assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < 1e-4
