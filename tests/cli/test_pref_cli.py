import json
import os

import pytest

from alignkit.cli import main
from alignkit.models.tiny import tiny_model, tiny_tokenizer
from tests.helpers.files import write_jsonl
from tests.helpers.paths import CONFIGS, DEMO_DATA


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny causal LM saved as a Hugging Face folder, so commands can load it by path."""
    folder = tmp_path_factory.mktemp("tiny")
    tok = tiny_tokenizer()
    tiny_model(tok).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return str(folder)


def quick(tmp_path, tiny_dir, *extra, cache=True):
    args = [f"model.name={tiny_dir}", f"train.output_dir={tmp_path / 'run'}", "train.max_steps=2",
            "train.batch_size=2", "train.precision=fp32", "train.progress=false", "train.resume=none", *extra]
    return args + ([f"reference_cache={tmp_path / 'refcache'}"] if cache else [])


GOOD = {"prompt": "Say hi", "chosen": "hi", "rejected": "go away"}


@pytest.mark.parametrize("command, record, where", [
    ("dpo", {"prompt": "Q", "chosen": "A"}, "rejected: missing"),
    ("dpo", {"prompt": "Q", "chosen": "A", "rejected": "A"}, "rejected: identical to chosen"),
    ("ipo", {"prompt": "Q", "chosen": [{"role": "user", "content": "A"}], "rejected": "B"}, "chosen"),
    ("rrhf", {"prompt": "Q", "responses": [{"text": "a", "score": 1}, {"text": "b"}]}, "responses[1].score: missing"),
    ("kto", {"prompt": "Q", "completion": "A", "label": "maybe"}, "label: expected"),
])
def test_bad_records_stop_the_command_with_file_line_and_field(tmp_path, tiny_dir, capsys, command, record, where):
    good = {"prompt": "Q0", "responses": ["a", "b"], "ranked": True} if command == "rrhf" else (
        {"prompt": "Q0", "completion": "A", "label": True} if command == "kto" else GOOD)
    path = write_jsonl(tmp_path / "prefs.jsonl", [good, good, record])
    code = main([command, *quick(tmp_path, tiny_dir, f"data.train=[{path}]")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{path}:3: {where}" in err, err


def test_shorthand_refuses_another_loss_and_missing_hyperparameters_are_named(tmp_path, tiny_dir, capsys):
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD])
    assert main(["dpo", "loss=ipo", f"data.train=[{path}]"]) == 2
    assert "presets loss=dpo" in capsys.readouterr().err
    assert main(["simpo", *quick(tmp_path, tiny_dir, f"data.train=[{path}]")]) == 2
    assert "simpo_gamma" in capsys.readouterr().err
    assert main(["pref", "loss=dpo", "data.pair_rul=best_vs_rest"]) == 2
    assert "pair_rul" in capsys.readouterr().err


def test_dpo_command_trains_saves_and_reuses_the_reference_cache(tmp_path, tiny_dir, capsys):
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD, {"prompt": "Name a fox", "chosen": "quick brown fox",
                                                     "rejected": "a dog"}])
    assert main(["dpo", *quick(tmp_path, tiny_dir, f"data.train=[{path}]", "train.lr=1e-3")]) == 0
    out = capsys.readouterr().out
    assert "computed and cached" in out
    summary = json.load(open(tmp_path / "run" / "summary.json"))
    assert summary["steps"] == 2 and {"accuracy", "reward_margin", "chosen_reward"} <= set(summary["final"])
    assert os.path.exists(tmp_path / "run" / "final" / "model.safetensors")
    rerun = quick(tmp_path, tiny_dir, f"data.train=[{path}]", "train.if_exists=overwrite")
    assert main(["pref", "loss=dpo", *rerun]) == 0
    assert "loaded from cache" in capsys.readouterr().out


def test_rm_score_and_rm_eval_commands(tmp_path, tiny_dir, shared_data, capsys):
    data = os.path.join(DEMO_DATA, "pref_heldout.jsonl")
    assert main(["rm", *quick(tmp_path, tiny_dir, f"data.train=[{data}]", "data.max_length=96", cache=False)]) == 0
    rm_dir = str(tmp_path / "run" / "final")
    capsys.readouterr()

    responses = write_jsonl(tmp_path / "gen.jsonl", [{"prompt": "Say hi", "response": "hi"},
                                                     {"prompt": "Say hi", "response": "HELLO"}])
    assert main(["score", "--model", rm_dir, "--input", responses, "--out", str(tmp_path / "scored.jsonl")]) == 0
    scored = [json.loads(line) for line in open(tmp_path / "scored.jsonl")]
    assert [r["response"] for r in scored] == ["hi", "HELLO"] and all(isinstance(r["reward"], float) for r in scored)

    files = [os.path.join(shared_data, "llmbar", n) for n in ("natural.json", "adversarial_neighbor.json")]
    out_json = tmp_path / "rm_eval.json"
    assert main(["rm-eval", "--model", rm_dir, "--data", *files, "--max-length", "128", "--batch-size", "16",
                 "--out", str(out_json)]) == 0
    table = capsys.readouterr().out
    assert all(f"file {f}" in table for f in files) and "len_corr" in table
    result = json.load(open(out_json))
    assert {k: v["pairs"] for k, v in result["per_file"].items()} == {files[0]: 100, files[1]: 134}
    assert main(["rm-eval", "--model", tiny_dir, "--data", files[0]]) == 2  # a causal LM is not a reward model
    assert "not a reward model" in capsys.readouterr().err


@pytest.mark.integration
def test_a_few_dpo_steps_on_the_embedded_model(tmp_path, capsys):
    pairs = os.path.join(DEMO_DATA, "pref_train.jsonl")
    # The machine is a shared CPU (~200 tokens/s forward for this 135M model): keep it to a few pairs.
    args = ["dpo", f"data.train=[{pairs}]", "data.max_length=96", "data.mix_total=4",
            f"train.output_dir={tmp_path / 'run'}", "train.max_steps=2", "train.batch_size=2", "train.lr=5e-6",
            "train.precision=bf16", "train.progress=false", "train.resume=none",
            f"reference_cache={tmp_path / 'refcache'}", "model.lora.enabled=true", "merge_lora=false"]
    assert main(args) == 0
    summary = json.load(open(tmp_path / "run" / "summary.json"))
    assert summary["steps"] == 2 and summary["final"]["loss"] > 0
    assert os.path.exists(tmp_path / "run" / "final" / "adapter" / "adapter_config.json")


def test_rm_with_use_margin_names_the_pair_without_one(tmp_path, tiny_dir, capsys):
    path = write_jsonl(tmp_path / "p.jsonl", [{**GOOD, "margin": 1.0}, GOOD])
    assert main(["rm", *quick(tmp_path, tiny_dir, f"data.train=[{path}]", "use_margin=true", cache=False)]) == 2
    assert f"{path}:2: margin: missing" in capsys.readouterr().err


def test_every_shipped_preference_config_loads_and_passes_its_checks():
    from alignkit.config import load_config
    from alignkit.training.pref_run import PrefConfig
    from alignkit.training.reward import RMConfig

    for name in ("dpo.yaml", "ipo.yaml", "simpo.yaml", "slic.yaml", "orpo.yaml", "kto.yaml", "rrhf.yaml",
                 "control.yaml", "rm.yaml"):
        cls = RMConfig if name == "rm.yaml" else PrefConfig
        cfg = load_config(cls, os.path.join(CONFIGS, name))
        if cls is PrefConfig:
            cfg.check()
            assert cfg.loss == name.removesuffix(".yaml")
