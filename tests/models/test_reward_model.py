import json
import math
import os

import pytest
import torch

from alignkit.data.errors import RecordError
from alignkit.data.pref_examples import build_examples
from alignkit.data.readers import DataSpec
from alignkit.evaluation.reward_eval import (load_eval_pairs, pearson, rm_eval, score_file, summarize,
                                             to_eval_pair)
from alignkit.models.reward import RewardModel, load_reward_model, score_sequences
from alignkit.models.tiny import tiny_model
from alignkit.training.config import TrainConfig
from alignkit.training.loop import train
from alignkit.training.pref_run import PrefDataConfig, load_pref_data
from alignkit.training.reward import RewardObjective
from tests.helpers.paths import DEMO_DATA


def random_head_rm(tok, seed=0):
    rm = RewardModel.from_causal_lm(tiny_model(tok, seed=seed), tok)
    torch.manual_seed(seed)
    torch.nn.init.normal_(rm.hf.score.weight)
    return rm


SEQS = ["What is the capital of France? Paris.", "hello", "the quick brown fox jumps over the lazy dog"]


def test_packed_rewards_equal_the_hf_forward_on_each_sequence_alone(tiny_tok):
    rm = random_head_rm(tiny_tok)
    ids = [tiny_tok(s).input_ids for s in SEQS]
    packed = score_sequences(rm, ids, batch_size=3)
    with torch.no_grad():
        alone = [float(rm.hf(input_ids=torch.tensor([x])).logits[0, 0]) for x in ids]
    assert packed == pytest.approx(alone, rel=1e-4, abs=1e-5)
    assert len(set(round(v, 4) for v in packed)) == 3  # a head that says something


def test_checkpoint_round_trip_in_hugging_face_layout(tmp_path, tiny_tok):
    from transformers import AutoModelForSequenceClassification

    rm = random_head_rm(tiny_tok, seed=4)
    ids = [tiny_tok(s).input_ids for s in SEQS]
    before = score_sequences(rm, ids)
    rm.save_pretrained(str(tmp_path), tiny_tok)
    loaded, tok = load_reward_model(str(tmp_path))
    assert score_sequences(loaded, [tok(s).input_ids for s in SEQS]) == pytest.approx(before, rel=1e-6)
    plain = AutoModelForSequenceClassification.from_pretrained(str(tmp_path))  # what other tools load
    assert plain.config.num_labels == 1
    torch.testing.assert_close(plain.score.weight, rm.hf.score.weight)


def test_a_causal_lm_is_not_a_reward_model_unless_asked(tmp_path, tiny_tok):
    from alignkit.models.loading import ModelLoadError

    lm = tiny_model(tiny_tok)
    lm.save_pretrained(str(tmp_path))
    tiny_tok.save_pretrained(str(tmp_path))
    with pytest.raises(ModelLoadError, match="not a reward model"):
        load_reward_model(str(tmp_path))
    rm, _ = load_reward_model(str(tmp_path), from_lm=True)
    # fresh zero head: every reward 0, the transformer is the LM's
    assert score_sequences(rm, [tiny_tok("hi").input_ids]) == [0.0]
    torch.testing.assert_close(rm.hf.model.layers[0].mlp.up_proj.weight, lm.model.layers[0].mlp.up_proj.weight)


def test_reward_objective_is_bradley_terry_on_packed_rewards(tiny_tok):
    rm = random_head_rm(tiny_tok, seed=2)
    rows = [("q1", "good answer", "bad"), ("q2", "fine", "the lazy dog")]
    items = [([{"role": "user", "content": p}], [[{"role": "assistant", "content": c}],
                                                 [{"role": "assistant", "content": r}]], 0.5, None, "m", i, "line")
             for i, (p, c, r) in enumerate(rows)]
    examples, _ = build_examples(items, tiny_tok, max_length=128)
    objective = RewardObjective(use_margin=True, center_coefficient=0.1)
    with torch.no_grad():
        total, metrics = objective.loss(rm, objective.collate(examples))
    r = score_sequences(rm, [s[0] for ex in examples for s in ex.sequences])
    expected = sum(-math.log(1 / (1 + math.exp(-(c - j - 0.5)))) + 0.1 * (c + j) ** 2
                   for c, j in zip(r[0::2], r[1::2]))
    assert float(total) == pytest.approx(expected, rel=1e-4)
    assert metrics["accuracy"] == sum(c > j for c, j in zip(r[0::2], r[1::2]))


def test_reward_model_trained_on_demo_pairs_beats_chance_on_heldout_pairs(tmp_path, tiny_tok):
    data = PrefDataConfig(train=[DataSpec(os.path.join(DEMO_DATA, "pref_train.jsonl"))], max_length=128)
    examples, _, _ = load_pref_data(data, tiny_tok, seed=0)
    rm = RewardModel.from_causal_lm(tiny_model(tiny_tok), tiny_tok)
    train(rm, RewardObjective(), examples, TrainConfig(output_dir=str(tmp_path), max_steps=20, batch_size=16,
                                                       lr=3e-3, precision="fp32", progress=False, resume="none"))
    result = rm_eval(rm, tiny_tok, os.path.join(DEMO_DATA, "pref_heldout.jsonl"))
    assert result.overall["pairs"] == 234
    assert result.overall["accuracy"] > 0.6  # chance: 0.5
    assert result.per_subset["plain"]["accuracy"] > 0.8  # format violations are what it can see


# ---- rm-eval arithmetic ----

def test_pearson_against_hand_values():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # x = [1,2,3,4], y = [1,3,2,4]: cov = 4/4... by hand: dx = [-1.5,-.5,.5,1.5], dy = [-1.5,.5,-.5,1.5]
    # sum dx*dy = 2.25 - .25 - .25 + 2.25 = 4; sum dx^2 = sum dy^2 = 5 -> r = 0.8
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert pearson([1, 1, 1], [1, 2, 3]) is None and pearson([1], [2]) is None


def test_summarize_counts_ties_as_wrong_and_measures_length_preference():
    # pair 1: right, chosen longer; pair 2: tie; pair 3: wrong, chosen shorter; pair 4: right, chosen shorter
    s = summarize(chosen=[2.0, 1.0, 0.0, 5.0], rejected=[1.0, 1.0, 3.0, 4.0],
                  chosen_len=[10, 5, 3, 2], rejected_len=[4, 7, 9, 8])
    assert s["pairs"] == 4 and s["ties"] == 1 and s["accuracy"] == pytest.approx(2 / 4)
    # untied pairs of unequal length: 1 (higher score is longer: yes), 3 (higher = rejected, longer: yes),
    # 4 (higher = chosen, shorter: no) -> 2 of 3
    assert s["prefers_longer"] == pytest.approx(2 / 3)
    assert s["labels_prefer_longer"] == pytest.approx(1 / 4)
    expected = pearson([2.0, 1.0, 0.0, 5.0, 1.0, 1.0, 3.0, 4.0], [10, 5, 3, 2, 4, 7, 9, 8])
    assert s["length_correlation"] == pytest.approx(expected)


def test_llmbar_label_picks_chosen_and_bad_labels_are_placed(tmp_path):
    pair = to_eval_pair({"input": "Say hi", "output_1": "bye", "output_2": "hi", "label": 2})
    assert pair.chosen[0]["content"] == "hi" and pair.rejected[0]["content"] == "bye"
    path = tmp_path / "bar.json"
    path.write_text(json.dumps([{"input": "a", "output_1": "x", "output_2": "y", "label": 1},
                                {"input": "b", "output_1": "x", "output_2": "y", "label": 3}]))
    with pytest.raises(RecordError) as err:
        load_eval_pairs(str(path))
    assert str(err.value).startswith(f"{path}:record 2: label:")


def test_llmbar_files_give_per_file_accuracy(shared_data, tiny_tok):
    rm = random_head_rm(tiny_tok, seed=5)
    files = [os.path.join(shared_data, "llmbar", name) for name in ("natural.json", "adversarial_neighbor.json")]
    result = rm_eval(rm, tiny_tok, files, batch_size=16, max_length=128)
    assert set(result.per_file) == set(files)
    assert result.per_file[files[0]]["pairs"] == 100 and result.per_file[files[1]]["pairs"] == 134
    n = sum(v["pairs"] for v in result.per_file.values())
    weighted = sum(v["accuracy"] * v["pairs"] for v in result.per_file.values()) / n
    assert result.overall["accuracy"] == pytest.approx(weighted)


def test_score_file_adds_rewards_to_generate_output(tmp_path, tiny_tok):
    rm = random_head_rm(tiny_tok, seed=6)
    src = tmp_path / "gen.jsonl"
    rows = [{"messages": [{"role": "user", "content": "q"}], "prompt": "q", "response": "fox"},
            {"prompt": "say", "response": "a", "responses": ["a", "the dog"]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    written, cut = score_file(rm, tiny_tok, str(src), str(tmp_path / "out.jsonl"))
    out = [json.loads(line) for line in open(tmp_path / "out.jsonl")]
    assert written == 3 and cut == 0 and out[0]["response"] == "fox"
    from alignkit.data.chat import tokenize_conversation

    def reward(messages):
        return score_sequences(rm, [tokenize_conversation(tiny_tok, messages).input_ids])[0]

    assert out[0]["reward"] == pytest.approx(reward([{"role": "user", "content": "q"},
                                                     {"role": "assistant", "content": "fox"}]), rel=1e-5)
    assert out[1]["rewards"][1] == pytest.approx(reward([{"role": "user", "content": "say"},
                                                         {"role": "assistant", "content": "the dog"}]), rel=1e-5)
    assert "reward" not in out[1]  # one number would stand for the first sample only
    assert out[2]["reward"] == pytest.approx(reward(rows[2]["messages"]), rel=1e-5)


class FixedSamples:
    """A generation backend returning `n` known samples per prompt, so the test knows what generate wrote."""
    model_id = "fixed"

    def chat(self, conversations, params):
        from alignkit.generation.backend import Completion
        return [[Completion(f"{c[-1]['content']} sample {i}" + " and more" * i) for i in range(params.n)]
                for c in conversations]

    def complete(self, prompts, params):
        raise AssertionError("generate answers conversations")


@pytest.mark.parametrize("rule,threshold", [("best_vs_worst", 0.0), ("best_vs_rest", 0.0), ("all_pairs", 0.0),
                                            ("margin", 0.05)])
def test_generated_samples_scored_by_a_reward_model_pair_by_reward(tmp_path, tiny_tok, rule, threshold):
    """generate --n 4, then score, then the DPO loader: pairs follow the rewards, not the sampling order."""
    from alignkit.data.preference import load_pairs
    from alignkit.generation.backend import SamplingParams
    from alignkit.data.prompts import read_prompt_records
    from alignkit.generation.files import generate_file

    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}]}) + "\n"
                                    for q in ("name a fox", "say hello", "count to three")))
    prompts = read_prompt_records([str(prompts_file)])
    generate_file(FixedSamples(), prompts, str(tmp_path / "gen.jsonl"), SamplingParams(n=4, temperature=1.0),
                  progress=False)
    score_file(random_head_rm(tiny_tok, seed=3), tiny_tok, str(tmp_path / "gen.jsonl"), str(tmp_path / "scored.jsonl"))
    scored = [json.loads(line) for line in open(tmp_path / "scored.jsonl")]
    reward = {(r["prompt"], text): value for r in scored for text, value in zip(r["responses"], r["rewards"])}
    # Sampling order must disagree with the rewards somewhere, or this test could not tell them apart.
    assert any(max(range(4), key=r["rewards"].__getitem__) != 0 for r in scored)

    pairs, _ = load_pairs(str(tmp_path / "scored.jsonl"), rule=rule, threshold=threshold)
    got = {(p.prompt[-1]["content"], p.chosen[0]["content"], p.rejected[0]["content"]) for p in pairs}
    expected = set()
    for r in scored:
        values = dict(zip(r["responses"], r["rewards"]))
        best, worst = max(values.values()), min(values.values())
        for chosen, better in values.items():
            for rejected, worse in values.items():
                keep = {"all_pairs": better > worse, "best_vs_rest": better == best and worse < best,
                        "best_vs_worst": better == best and worse == worst and better > worse,
                        "margin": better - worse > threshold}[rule]
                if keep:
                    expected.add((r["prompt"], chosen, rejected))
    assert got == expected and len(pairs) == len(expected)
    assert all(reward[(q, c)] > reward[(q, w)] for q, c, w in got)

