import json

import pytest
import torch

from alignkit.evaluation.reward_eval import score_file
from alignkit.models.reward import RewardModel
from alignkit.models.tiny import tiny_model
from alignkit.rewards.interface import Sample
from alignkit.rewards.reward_model import RewardModelReward
from alignkit.rewards.spec import RewardSpec, build_reward

ROWS = [("What is the capital of France?", "Paris."), ("hello", "hi there, how can I help?"),
        ("Name a colour.", "the quick brown fox jumps over the lazy dog")]


@pytest.fixture
def rm_dir(tmp_path, tiny_tok):
    """A tiny reward model with a random head (so rewards differ), saved as `alignkit rm` saves one."""
    rm = RewardModel.from_causal_lm(tiny_model(tiny_tok, seed=3), tiny_tok)
    torch.manual_seed(3)
    torch.nn.init.normal_(rm.hf.score.weight)
    path = tmp_path / "rm"
    rm.save_pretrained(str(path), tiny_tok)
    return str(path)


def samples():
    return [Sample([{"role": "user", "content": q}], a) for q, a in ROWS]


def test_rm_reward_scores_like_alignkit_score(tmp_path, rm_dir):
    from alignkit.models.reward import load_reward_model

    reward = RewardModelReward(path=rm_dir, device="cpu")
    result = reward.score(samples())
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps({"prompt": q, "response": a}) + "\n" for q, a in ROWS))
    model, tok = load_reward_model(rm_dir)
    score_file(model, tok, str(src), str(out))
    with open(out) as f:
        expected = [json.loads(line)["reward"] for line in f]
    assert result.scores == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert len({round(v, 4) for v in result.scores}) == len(ROWS)  # a head that tells them apart
    assert result.num_failures == 0 and result.counts == {"truncated": 0}


def test_rm_reward_cuts_long_inputs_from_the_left_and_counts_them(rm_dir):
    full = RewardModelReward(path=rm_dir, device="cpu").score(samples())
    short = RewardModelReward(path=rm_dir, device="cpu", max_length=6).score(samples())
    assert short.counts["truncated"] == len(ROWS)
    assert short.scores != pytest.approx(full.scores)


def test_rm_reward_from_a_config_loads_only_when_first_used(rm_dir):
    reward = build_reward([RewardSpec(kind="rm", path=rm_dir, device="cpu", weight=2.0)])
    (rm_part, weight), = reward.parts
    assert rm_part.model is None and weight == 2.0
    result = reward.score(samples())
    direct = RewardModelReward(path=rm_dir, device="cpu").score(samples()).scores
    assert result.scores == pytest.approx([2 * v for v in direct], rel=1e-6)
    assert result.components["rm"].scores == pytest.approx(direct, rel=1e-6)
