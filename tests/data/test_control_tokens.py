import pytest
import torch

from alignkit.data.chat import IGNORE, tokenize_conversation, tokenize_prompt
from alignkit.data.control import ControlConfig, condition, load_control, score_control
from alignkit.data.errors import RecordError
from alignkit.data.readers import DataSpec
from alignkit.models.tiny import tiny_model
from alignkit.training.config import TrainConfig
from alignkit.training.loop import train
from alignkit.training.pref_run import PrefConfig, PrefDataConfig, load_control_data
from alignkit.training.sft import SFTObjective
from tests.helpers.files import write_jsonl


def test_condition_places_the_control_text():
    msgs = [{"role": "user", "content": "Q"}]
    assert condition(msgs, "[good]") == [{"role": "system", "content": "[good]"}, {"role": "user", "content": "Q"}]
    assert condition(msgs, "[good]", "prefix") == [{"role": "user", "content": "[good]\nQ"}]
    with_system = [{"role": "system", "content": "Be brief."}] + msgs
    assert condition(with_system, "[good]")[0] == {"role": "system", "content": "[good]\nBe brief."}
    assert msgs == [{"role": "user", "content": "Q"}]  # input untouched


def test_pairs_give_a_good_and_a_bad_conversation_trained_on_the_response_only(tmp_path, tiny_tok):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q?", "chosen": "yes", "rejected": "no"}])
    convs, _ = load_control(path, ControlConfig(good="[quality: good]", bad="[quality: bad]"))
    assert [c.messages[0]["content"] for c in convs] == ["[quality: good]", "[quality: bad]"]
    assert [c.messages[-1]["content"] for c in convs] == ["yes", "no"]
    tok = tokenize_conversation(tiny_tok, convs[0].messages, train_on="last_assistant")
    trained = tiny_tok.decode([t for t, lab in zip(tok.input_ids, tok.labels) if lab != IGNORE])
    assert "yes" in trained and "quality" not in trained and "Q?" not in trained


def test_scored_records_become_score_tokens(tmp_path):
    assert score_control({"verbosity": 1.4, "helpfulness": 3.6}) == "[helpfulness: 4] [verbosity: 1]"
    assert score_control({"a": 1.25, "b": 2}, ["b", "a"], decimals=1) == "[b: 2.0] [a: 1.2]"
    path = write_jsonl(tmp_path / "s.jsonl", [
        {"prompt": "Q", "completion": "A", "scores": {"helpfulness": 4, "verbosity": 1}},
        {"messages": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "B"}],
         "scores": {"helpfulness": 2, "verbosity": 3}}])
    convs, _ = load_control(path, ControlConfig(objectives=["helpfulness", "verbosity"], placement="prefix"))
    assert convs[0].messages == [{"role": "user", "content": "[helpfulness: 4] [verbosity: 1]\nQ"},
                                 {"role": "assistant", "content": "A"}]
    assert convs[1].messages[0]["content"].startswith("[helpfulness: 2] [verbosity: 3]\n")


@pytest.mark.parametrize("record, where", [
    ({"prompt": "Q", "completion": "A", "scores": {"helpfulness": 4}}, "scores.verbosity: missing"),
    ({"prompt": "Q", "completion": "A", "scores": {"helpfulness": "high", "verbosity": 1}}, "scores.helpfulness:"),
    ({"prompt": "Q", "chosen": "A"}, "rejected: missing"),
])
def test_bad_control_records_name_file_line_and_field(tmp_path, record, where):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok", "chosen": "a", "rejected": "b"}, record])
    with pytest.raises(RecordError) as err:
        load_control(path, ControlConfig(objectives=["helpfulness", "verbosity"]))
    assert str(err.value).startswith(f"{path}:2: {where}")


def test_control_sft_learns_to_condition_on_the_good_prefix(tmp_path, tiny_tok):
    # The same two answers for every prompt: only the control text can tell the model which to give.
    rows = [{"prompt": f"Question {i}: say something", "chosen": "the quick brown fox", "rejected": "lazy dog"}
            for i in range(24)]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows[:20])
    cfg = PrefConfig(loss="control", data=PrefDataConfig(train=[DataSpec(path)], max_length=64))
    train_examples, _, _ = load_control_data(cfg, tiny_tok, seed=0)
    assert len(train_examples) == 40  # a good and a bad conversation per pair
    heldout = [[{"role": "user", "content": r["prompt"]}] for r in rows[20:]]

    def greedy(model, control: str) -> list[str]:
        out = []
        for prompt in heldout:
            ids = torch.tensor([tokenize_prompt(tiny_tok, condition(prompt, control))])
            gen = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tiny_tok.pad_token_id)
            out.append(tiny_tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
        return out

    model = tiny_model(tiny_tok)
    model.generation_config.eos_token_id = None  # generate exactly max_new_tokens
    train(model, SFTObjective(), train_examples,
          TrainConfig(output_dir=str(tmp_path / "run"), max_steps=30, batch_size=8, lr=3e-3, precision="fp32",
                      progress=False, resume="none"))
    model.eval()
    assert all(text.startswith("the quick") for text in greedy(model, cfg.control.good))
    assert all(text.startswith("lazy") for text in greedy(model, cfg.control.bad))
