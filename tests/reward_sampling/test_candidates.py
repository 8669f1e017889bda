"""The shared first step of the sampling-with-a-reward methods: n samples per prompt, each scored, in order;
errors never scored, failures kept with their reason, and the samples file readable as a scored ranking."""
from __future__ import annotations

import json

import pytest

from alignkit.generation.backend import Completion, SamplingParams
from alignkit.generation.local import LocalBackend
from alignkit.reward_sampling.candidates import (SamplingConfig, heldout_eval, sample_and_score,
                                                 samples_record)
from alignkit.rewards.interface import CombinedReward, RewardResult
from alignkit.data.prompts import PromptRecord


class LengthReward:
    """Reward = characters in the completion; a completion containing 'x' cannot be scored."""
    name = "length"

    def score(self, samples):
        failures = ["has an x" if "x" in s.completion else None for s in samples]
        return RewardResult([-1.0 if f else float(len(s.completion)) for s, f in zip(samples, failures)], failures)


class ScriptedBackend:
    """Returns the texts given per prompt (by the prompt's last user message), n of them."""
    model_id = "scripted"

    def __init__(self, texts: dict[str, list[str]], error_for: str = ""):
        self.texts, self.error_for = texts, error_for

    def chat(self, conversations, params):
        out = []
        for conv in conversations:
            key = conv[-1]["content"]
            if key == self.error_for:
                out.append([Completion("", finish_reason="error", error="server said no")] * params.n)
            else:
                out.append([Completion(t, finish_reason="length" if t.endswith("...") else "stop",
                                       completion_tokens=len(t.split())) for t in self.texts[key][:params.n]])
        return out

    def complete(self, prompts, params):
        raise AssertionError("conversations only")


def prompts(*keys):
    return [PromptRecord([{"role": "user", "content": k}], {"source": f"p.jsonl:{i + 1}", "answer": k.upper()})
            for i, k in enumerate(keys)]


def test_every_sample_scored_in_prompt_and_sampling_order_with_failures_kept():
    backend = ScriptedBackend({"a": ["aaa", "a", "xx"], "b": ["bb", "bbbb..."]})
    reward = CombinedReward([(LengthReward(), 2.0)])
    out = sample_and_score(backend, prompts("a", "b"), SamplingParams(n=3, temperature=1.0), reward, progress=False)
    assert [p.prompt.messages[-1]["content"] for p in out] == ["a", "b"]
    assert [[s.text for s in p.samples] for p in out] == [["aaa", "a", "xx"], ["bb", "bbbb..."]]
    assert out[0].rewards == [6.0, 2.0, -2.0]  # weight 2 on the length; the failure keeps its failure score
    assert out[0].samples[2].failure == "length: has an x" and out[0].samples[0].failure is None
    assert out[0].samples[0].components == {"length": 3.0}  # unweighted part
    assert out[1].samples[1].finish_reason == "length" and out[1].samples[1].num_tokens == 1


def test_an_errored_completion_stops_the_call_naming_the_prompt():
    backend = ScriptedBackend({"a": ["aaa"]}, error_for="b")
    with pytest.raises(RuntimeError, match=r"p.jsonl:2: sampling failed: server said no"):
        sample_and_score(backend, prompts("a", "b"), SamplingParams(n=1), LengthReward(), progress=False)


def test_samples_record_reads_back_as_a_ranking_ordered_by_reward(tmp_path):
    from alignkit.data.preference import load_pairs, load_rankings

    backend = ScriptedBackend({"a": ["aa", "aaaa", "a"]})
    (item,) = sample_and_score(backend, prompts("a"), SamplingParams(n=3, temperature=1.0), LengthReward(),
                               progress=False)
    record = samples_record(item)
    assert record["answer"] == "A" and record["ranked"] is False
    assert record["failures"] == [None, None, None] and record["completion_tokens"] == [1, 1, 1]
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps(record) + "\n")
    (ranking,), _ = load_rankings([str(path)])
    assert [ranking.responses[i][-1]["content"] for i in ranking.best_first()] == ["aaaa", "aa", "a"]
    (pair,), _ = load_pairs([str(path)], rule="best_vs_worst")
    assert pair.chosen[-1]["content"] == "aaaa" and pair.rejected[-1]["content"] == "a"


def test_heldout_eval_scores_greedy_answers_of_a_real_model(tiny_lm, tiny_tok):
    backend = LocalBackend(tiny_lm, tiny_tok, batch_size=4)
    ps = prompts("hello", "world", "the sea")
    result = heldout_eval(backend, ps, CombinedReward([(LengthReward(), 1.0)]), max_tokens=6)
    greedy = [c[0].text for c in backend.chat([p.messages for p in ps], SamplingParams(max_tokens=6))]
    scored = [-1.0 if "x" in t else float(len(t)) for t in greedy]
    assert result.prompts == 3 and result.reward_mean == pytest.approx(sum(scored) / 3)
    assert result.components == {"length": pytest.approx(sum(scored) / 3)}
    assert result.failures == sum("x" in t for t in greedy)


def test_sampling_config_checks_its_values_and_builds_params():
    from alignkit.config import ConfigError

    cfg = SamplingConfig(n=8, max_tokens=32, temperature=0.7, seed=3, stop=["###"])
    assert cfg.params() == SamplingParams(max_tokens=32, temperature=0.7, n=8, seed=3, stop=("###",))
    assert cfg.params(n=2, seed=9).n == 2
    for bad, key in ((SamplingConfig(n=0), "n"), (SamplingConfig(temperature=0.0), "temperature"),
                     (SamplingConfig(top_p=1.5), "top_p"), (SamplingConfig(stop=[""]), "stop")):
        with pytest.raises(ConfigError, match=f"sampling.{key}"):
            bad.validate()
