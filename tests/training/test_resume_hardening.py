"""Starting, resuming and rerunning a training run: missing tracker packages, metrics that read as one
run, leftovers of interrupted saves, damaged checkpoints, and reruns into a finished run's folder."""
import importlib.util
import json
import os

import pytest
import torch
import yaml

from alignkit.cli import main
from alignkit.config import ConfigError
from alignkit.data.readers import DataSpec
from alignkit.errors import is_user_error
from alignkit.models.config import ModelConfig
from alignkit.models.tiny import tiny_model, tiny_tokenizer
from alignkit.training.checkpoint import DamagedCheckpoint
from alignkit.training.config import TrainConfig
from alignkit.training.loop import train
from alignkit.training.pref_run import PrefConfig, PrefDataConfig, run_pref
from alignkit.training.reward import RMConfig, run_rm
from alignkit.training.sft import SFTConfig, SFTDataConfig, SFTObjective, run_sft
from tests.helpers.crash import Crash, crash_at
from tests.helpers.training import cfg, make_examples

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}
CHECKPOINT_FILES = {"trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json"}


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text((json.dumps(GOOD) + "\n") * 4)
    return str(path)


def sft_cli(tmp_path, model_dir, data, *extra):
    """`alignkit sft` into tmp_path/run: (exit code, run folder)."""
    out = tmp_path / "run"
    config = {"model": {"name": model_dir}, "data": {"train": [data], "max_length": 64},
              "train": {"output_dir": str(out), "max_steps": 2, "batch_size": 2, "precision": "fp32",
                        "progress": False}}
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(config))
    return main(["sft", "--config", str(tmp_path / "sft.yaml"), *extra]), out


def logged_steps(run_dir, key="loss"):
    return [r["step"] for r in map(json.loads, open(run_dir / "metrics.jsonl")) if key in r]


def refuse_loading(monkeypatch):
    """Loading a tokenizer or model fails loudly: the checks under test must come before any loading."""
    import alignkit.models.loading as loading

    def refuse(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded")

    monkeypatch.setattr(loading, "load_tokenizer", refuse)
    monkeypatch.setattr(loading, "load_model", refuse)


@pytest.fixture
def no_loading(monkeypatch):
    refuse_loading(monkeypatch)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ---- a tracker whose package is missing ----

@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_missing_tracker_package_is_named_before_the_model_loads(tmp_path, model_dir, data, capsys, no_loading):
    code, out = sft_cli(tmp_path, model_dir, data, "train.report_to=[tensorboard]")
    assert code == 2
    assert "pip install tensorboard" in one_line_error(capsys)
    assert not out.exists()


# ---- metrics.jsonl after a resume ----

def test_a_resumed_run_logs_each_step_once(tmp_path):
    tok = tiny_tokenizer()
    examples = make_examples(tok, 10)
    run_cfg = cfg(tmp_path, max_steps=8, save_every=3, eval_every=2)
    with pytest.raises(Crash):
        train(tiny_model(tok), SFTObjective(), examples, run_cfg, eval_examples=examples[:2], on_step=crash_at(5))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # a line cut short by the kill
    train(tiny_model(tok), SFTObjective(), examples, run_cfg, eval_examples=examples[:2])
    assert logged_steps(tmp_path) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert logged_steps(tmp_path, "eval_loss") == [2, 4, 6, 8]
    assert not list(tmp_path.glob(".tmp-*"))  # the rewrite's temporary file is gone


# ---- leftovers of interrupted saves ----

def test_leftovers_of_interrupted_checkpoint_saves_are_removed_on_the_next_start(tmp_path):
    tok = tiny_tokenizer()
    leftover = tmp_path / "checkpoints" / ".tmp-killed"
    leftover.mkdir(parents=True)
    (leftover / "trainable.safetensors").write_bytes(b"\0" * 1024)
    train(tiny_model(tok), SFTObjective(), make_examples(tok, 4), cfg(tmp_path, max_steps=1))
    assert not leftover.exists()


def test_a_stale_final_tmp_does_not_leak_into_the_final_model(tmp_path, model_dir, data):
    stale = tmp_path / "run" / ".tmp-final-4242-0badf00d"  # what a kill while saving final/ leaves
    stale.mkdir(parents=True)
    (stale / "half-written.bin").write_bytes(b"\0" * 1024)
    code, out = sft_cli(tmp_path, model_dir, data)
    assert code == 0
    assert not (out / "final" / "half-written.bin").exists() and not stale.exists()


def test_checkpoint_files_and_folders_reach_the_disk_before_the_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    tok = tiny_tokenizer()
    train(tiny_model(tok), SFTObjective(), make_examples(tok, 4), cfg(tmp_path, max_steps=2, save_every=1))
    assert CHECKPOINT_FILES <= set(synced)
    assert any(name.startswith(".tmp-") for name in synced)  # the folder, under its temporary name
    assert synced[-1] == "checkpoints"  # and the rename itself


# ---- damaged checkpoints ----

def damage(folder, name):
    path = folder / name
    if name == "trainable.safetensors":
        path.write_bytes(path.read_bytes()[:100])  # cut short
    else:
        path.write_bytes(b"not a checkpoint file")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tok = tiny_tokenizer()
    return train(tiny_model(tok), SFTObjective(), make_examples(tok, 10),
                 cfg(tmp_path_factory.mktemp("full"), max_steps=6, save_every=2)).history


def interrupted_run(tmp_path):
    """A run killed at step 5: checkpoints at steps 2 and 4."""
    tok = tiny_tokenizer()
    with pytest.raises(Crash):
        train(tiny_model(tok), SFTObjective(), make_examples(tok, 10), cfg(tmp_path, max_steps=6, save_every=2),
              on_step=crash_at(5))
    return tmp_path / "checkpoints"


@pytest.mark.parametrize("bad_file", ["trainable.safetensors", "optimizer.pt", "rng.pt", "state.json"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys, uninterrupted, bad_file):
    checkpoints = interrupted_run(tmp_path)
    damage(checkpoints / "step-0000004", bad_file)
    tok = tiny_tokenizer()
    resumed = train(tiny_model(tok), SFTObjective(), make_examples(tok, 10), cfg(tmp_path, max_steps=6, save_every=2))
    warning = capsys.readouterr().err
    assert "step-0000004" in warning and bad_file in warning
    # the same losses as without the crash: nothing of the bad checkpoint was applied before it was found bad
    assert [r["step"] for r in resumed.history] == [3, 4, 5, 6]
    for r in resumed.history:
        assert r["loss"] == pytest.approx(uninterrupted[r["step"] - 1]["loss"], rel=1e-6), r["step"]


def test_with_every_checkpoint_damaged_the_run_warns_and_starts_over(tmp_path, capsys, uninterrupted):
    checkpoints = interrupted_run(tmp_path)
    for folder in checkpoints.iterdir():
        damage(folder, "state.json")
    tok = tiny_tokenizer()
    resumed = train(tiny_model(tok), SFTObjective(), make_examples(tok, 10), cfg(tmp_path, max_steps=6, save_every=2))
    assert "no usable checkpoint" in capsys.readouterr().err
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in uninterrupted], rel=1e-6)


def test_a_damaged_checkpoint_named_by_the_user_is_a_user_error_and_leaves_the_model_alone(tmp_path):
    bad = interrupted_run(tmp_path) / "step-0000004"
    damage(bad, "optimizer.pt")  # read after the weights, which must not be copied in already
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    with pytest.raises(DamagedCheckpoint) as error:
        train(model, SFTObjective(), make_examples(tok, 10), cfg(tmp_path, max_steps=6, resume=str(bad)))
    assert is_user_error(error.value)
    assert str(bad) in str(error.value) and "optimizer.pt" in str(error.value)
    for (name, p), (_, q) in zip(model.named_parameters(), tiny_model(tok).named_parameters()):
        assert torch.equal(p, q), name


# ---- rerunning into a finished run's folder ----

def test_rerunning_a_finished_run_stops_before_loading_anything(tmp_path, model_dir, data, capsys, monkeypatch):
    code, out = sft_cli(tmp_path, model_dir, data)
    assert code == 0
    final_before = (out / "final" / "model.safetensors").read_bytes()
    refuse_loading(monkeypatch)
    with open(data, "a") as f:
        f.write("{not json\n")  # were the data read first, that would be the error
    capsys.readouterr()
    code, _ = sft_cli(tmp_path, model_dir, data)
    assert code == 2
    assert "if_exists" in one_line_error(capsys)
    assert (out / "final" / "model.safetensors").read_bytes() == final_before


def test_overwrite_starts_the_run_over(tmp_path, model_dir, data):
    code, out = sft_cli(tmp_path, model_dir, data, "train.max_steps=3", "train.save_every=1")
    assert code == 0 and (out / "checkpoints").is_dir()
    code, _ = sft_cli(tmp_path, model_dir, data, "train.if_exists=overwrite")
    assert code == 0
    assert not (out / "checkpoints").exists()  # not resumed from, and not left over
    assert logged_steps(out) == [1, 2]
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


def test_extend_continues_a_finished_run_from_its_last_checkpoint(tmp_path, model_dir, data):
    code, out = sft_cli(tmp_path, model_dir, data, "train.max_steps=3", "train.save_every=2")
    assert code == 0
    code, _ = sft_cli(tmp_path, model_dir, data, "train.max_steps=5", "train.if_exists=extend")
    assert code == 0
    assert logged_steps(out) == [1, 2, 3, 4, 5]
    assert json.loads((out / "summary.json").read_text())["steps"] == 5


def test_extend_without_a_checkpoint_says_what_to_do(tmp_path, model_dir, data, capsys):
    assert sft_cli(tmp_path, model_dir, data)[0] == 0
    capsys.readouterr()
    assert sft_cli(tmp_path, model_dir, data, "train.if_exists=extend")[0] == 2
    assert "no checkpoint" in one_line_error(capsys)


def test_an_unfinished_run_still_resumes_by_default(tmp_path, model_dir, data):
    code, out = sft_cli(tmp_path, model_dir, data, "train.max_steps=3", "train.save_every=2")
    assert code == 0
    (out / "summary.json").unlink()
    os.rename(out / "final", tmp_path / "moved")  # as if killed before the final save
    code, _ = sft_cli(tmp_path, model_dir, data, "train.max_steps=3", "train.save_every=2")
    assert code == 0 and logged_steps(out) == [1, 2, 3]


def test_an_output_dir_that_is_a_file_is_a_one_line_error(tmp_path, model_dir, data, capsys):
    (tmp_path / "run").write_text("keep me")
    code, out = sft_cli(tmp_path, model_dir, data)
    assert code == 2
    assert "is a file" in one_line_error(capsys)
    assert out.read_text() == "keep me"


def finished_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    return TrainConfig(output_dir=str(out))


@pytest.mark.parametrize("run, config", [
    (run_sft, lambda train: SFTConfig(model=ModelConfig(name="./no/such/model"),
                                      data=SFTDataConfig(train=[DataSpec("no.jsonl")]), train=train)),
    (run_pref, lambda train: PrefConfig(model=ModelConfig(name="./no/such/model"),
                                        data=PrefDataConfig(train=[DataSpec("no.jsonl")]), train=train)),
    (run_rm, lambda train: RMConfig(model=ModelConfig(name="./no/such/model"),
                                    data=PrefDataConfig(train=[DataSpec("no.jsonl")]), train=train)),
], ids=["sft", "pref", "rm"])
def test_every_trainer_refuses_a_finished_run_first(tmp_path, run, config):
    with pytest.raises(ConfigError, match="if_exists"):
        run(config(finished_folder(tmp_path)))
