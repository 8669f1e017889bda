"""Every training run (sft, pref, rm) leaves the same run folder: config.yaml, data_report.json, final/
and one summary.json schema."""
import json

import pytest
import yaml

from alignkit.data.readers import DataSpec
from alignkit.models.config import ModelConfig
from alignkit.models.reward import RewardModel
from alignkit.models.tiny import tiny_model, tiny_tokenizer
from alignkit.training.config import TrainConfig
from alignkit.training.pref_run import PrefConfig, PrefDataConfig, run_pref
from alignkit.training.reward import RMConfig, run_rm
from alignkit.training.loop import TrainResult
from alignkit.training.run import run_summary
from alignkit.training.sft import SFTConfig, SFTDataConfig, run_sft
from tests.helpers.files import write_jsonl

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}
PAIR = {"prompt": "Say hi", "chosen": "hi", "rejected": "go away"}
SUMMARY_KEYS = {"steps", "tokens", "seconds", "tokens_per_s", "final", "eval"}


def data_specs(path, record, n=4):
    """`record` n times in one JSONL file, as the list of DataSpecs a config takes."""
    return [DataSpec(write_jsonl(path, [record] * n))]


def train_cfg(out):
    return TrainConfig(output_dir=str(out), max_steps=2, batch_size=2, lr=1e-3, eval_every=2, precision="fp32",
                       progress=False, resume="none")


def sft(tmp_path, tok):
    cfg = SFTConfig(model=ModelConfig(name="tiny"), data=SFTDataConfig(train=data_specs(tmp_path / "d.jsonl", CHAT),
                                                                      eval_fraction=0.25),
                    train=train_cfg(tmp_path / "run"))
    return run_sft(cfg, model=tiny_model(tok), tokenizer=tok)


def pref(tmp_path, tok):
    cfg = PrefConfig(loss="dpo", reference_cache=str(tmp_path / "refcache"), model=ModelConfig(name="tiny"),
                     data=PrefDataConfig(train=data_specs(tmp_path / "d.jsonl", PAIR), eval_fraction=0.25),
                     train=train_cfg(tmp_path / "run"))
    return run_pref(cfg, model=tiny_model(tok), tokenizer=tok)


def rm(tmp_path, tok):
    cfg = RMConfig(model=ModelConfig(name="tiny"), data=PrefDataConfig(train=data_specs(tmp_path / "d.jsonl", PAIR),
                                                                      eval_fraction=0.25),
                   train=train_cfg(tmp_path / "run"))
    return run_rm(cfg, model=RewardModel.from_causal_lm(tiny_model(tok), tok), tokenizer=tok)


@pytest.mark.parametrize("run", [sft, pref, rm], ids=["sft", "pref", "rm"])
def test_every_run_writes_the_same_run_folder_and_summary_schema(tmp_path, run):
    result = run(tmp_path, tiny_tokenizer())
    out = tmp_path / "run"
    expected = {"config.yaml", "data_report.json", "final", "summary.json", "metrics.jsonl"}
    assert expected <= {p.name for p in out.iterdir()}
    assert not list(out.glob(".tmp-*"))
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["max_steps"] == 2
    assert json.loads((out / "data_report.json").read_text())["train_examples"] == 3
    assert (out / "final" / "config.json").exists() and (out / "final" / "model.safetensors").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == SUMMARY_KEYS
    assert summary["steps"] == result.steps == 2 and summary["tokens"] == result.tokens
    assert summary["final"] == json.loads(json.dumps(result.history[-1])) and summary["final"]["loss"] > 0
    assert summary["eval"]["step"] == 2 and "eval_loss" in summary["eval"]


def test_a_run_that_logged_nothing_has_no_final_or_eval_record():
    assert run_summary(TrainResult()) == {"steps": 0, "tokens": 0, "seconds": 0.0, "tokens_per_s": 0.0,
                                          "final": None, "eval": None}
