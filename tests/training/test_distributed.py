"""Data parallelism through torch.distributed: two processes with half the batch each train the same model
as one process with the whole batch, as one run (one set of files, one 'saved to'), and leave no gloo
thread behind at exit."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from alignkit.cli import main
from alignkit.models.tiny import tiny_model, tiny_tokenizer
from alignkit.training import distributed
from alignkit.training.loop import train
from alignkit.training.sft import SFTObjective
from tests.helpers.files import write_jsonl
from tests.helpers.paths import ROOT
from tests.helpers.training import WORDS, cfg, make_examples

TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable))
needs_torchrun = pytest.mark.skipif(TORCHRUN is None or not os.path.isdir("/proc/self/task"),
                                    reason="needs torchrun and Linux /proc")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([TORCHRUN, "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                           "--master_port", str(free_port()), *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def assert_clean_exit(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr


@needs_torchrun
def test_two_process_data_parallel_equals_one_process_and_ends_its_threads(tmp_path):
    proc = torchrun(str(ROOT / "tests" / "helpers" / "dist_sft_worker.py"), str(tmp_path), "2")
    assert_clean_exit(proc)
    ranks = [json.loads((tmp_path / f"result-{r}.json").read_text()) for r in (0, 1)]
    # Gloo threads alive after teardown live on into interpreter exit, where they aborted the process.
    assert all(r["gloo_threads"]["before_teardown"] for r in ranks)  # the check below can see them
    assert [r["gloo_threads"]["after_teardown"] for r in ranks] == [[], []]
    same = lambda history: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in history]  # noqa: E731
    assert same(ranks[0]["history"]) == same(ranks[1]["history"])  # every rank logs the all-reduced numbers
    # Rank 0 computes and caches the reference log-probs; rank 1 loads them instead of computing them too.
    assert "computed and cached" in ranks[0]["reference"] and "loaded from cache" in ranks[1]["reference"]

    tok = tiny_tokenizer()
    model = tiny_model(tok)
    single = train(model, SFTObjective(), make_examples(tok, 12), cfg(tmp_path / "single", batch_size=4))
    for a, b in zip(ranks[0]["history"], single.history, strict=True):
        assert a["units"] == b["units"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    weights = float(sum(p.detach().double().sum() for p in model.parameters()))
    assert ranks[0]["weights"] == pytest.approx(weights, rel=1e-6)


# ---- the command line under torchrun

def sft_rows(n: int = 12) -> list[dict]:
    answer = lambda i: " ".join(WORDS[(i + k) % len(WORDS)] for k in range(2 + i % 5))  # noqa: E731
    return [{"messages": [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": answer(i)}]}
            for i in range(n)]


def pair_rows(n: int = 8) -> list[dict]:
    return [{"prompt": f"say {i}", "chosen": " ".join(WORDS[i:i + 3]), "rejected": " ".join(WORDS[i + 4:i + 5])}
            for i in range(n)]


def run_config(tmp_path: Path, name: str, model_dir: str, data: str, batch_size: int) -> str:
    config = {"model": {"name": model_dir}, "data": {"train": [data], "max_length": 64},
              "train": {"output_dir": str(tmp_path / name), "max_steps": 3, "batch_size": batch_size, "lr": 1e-3,
                        "warmup_steps": 1, "precision": "fp32", "progress": False, "seed": 1, "threads": 1}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_one_run_like_single(parallel: Path, single: Path) -> None:
    """metrics.jsonl holds each step once, with the losses of one process taking the whole batch, and
    the final weights are the same."""
    got, expected = metrics(parallel), metrics(single)
    assert [r["step"] for r in got] == [1, 2, 3]
    for a, b in zip(got, expected, strict=True):
        assert a["units"] == b["units"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    a, b = (load_file(str(run / "final" / "model.safetensors")) for run in (parallel, single))
    assert a.keys() == b.keys()
    for name in a:  # Adam magnifies float rounding in near-zero gradients; a wrong update moves weights ~lr
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=5e-5, msg=name)
    assert (parallel / "summary.json").exists() and (parallel / "data_report.json").exists()


@needs_torchrun
def test_sft_under_torchrun_is_one_run_equal_to_one_process(tmp_path, model_dir, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows())
    config = run_config(tmp_path, "ddp", model_dir, data, 2)
    proc = torchrun("-m", "alignkit", "sft", "--config", config)
    assert_clean_exit(proc)
    assert proc.stdout.count("saved to") == 1, proc.stdout

    # Again into the finished run: rank 0 refuses in one line, and rank 1 stops rather than waits for it.
    again = torchrun("-m", "alignkit", "sft", "--config", config)
    assert again.returncode != 0
    assert "alignkit sft: error: train.output_dir:" in again.stderr, again.stderr[-3000:]
    assert f'File "{ROOT / "alignkit"}' not in again.stderr  # no traceback of ours

    assert main(["sft", "--config", run_config(tmp_path, "single", model_dir, data, 4)]) == 0
    assert_one_run_like_single(tmp_path / "ddp", tmp_path / "single")


@needs_torchrun
def test_dpo_under_torchrun_is_one_run_equal_to_one_process(tmp_path, model_dir):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows())
    cache = tmp_path / "refcache"
    proc = torchrun("-m", "alignkit", "dpo", "--config", run_config(tmp_path, "ddp", model_dir, data, 2),
                    f"reference_cache={cache}")
    assert_clean_exit(proc)
    assert proc.stdout.count("saved to") == 1, proc.stdout
    assert [p.suffix for p in cache.iterdir()] == [".safetensors"]  # one entry, no leftover temporary file

    assert main(["dpo", "--config", run_config(tmp_path, "single", model_dir, data, 4),
                 f"reference_cache={tmp_path / 'refcache-single'}"]) == 0
    assert_one_run_like_single(tmp_path / "ddp", tmp_path / "single")


# ---- one process

def test_one_process_runs_everything_itself(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env() is False
    assert distributed.rank_world() == (0, 1) and distributed.is_main()
    assert distributed.all_sum(2.5) == 2.5
    assert distributed.on_main(lambda: "done") == "done"
    assert distributed.main_first(lambda: 7) == 7
    model = object()
    assert distributed.wrap(model) is model
    distributed.teardown()  # nothing to leave


def test_a_bad_world_size_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "two")
    assert main(["sft", f"train.output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["alignkit sft: error: environment variable WORLD_SIZE must be a whole number, not 'two'"]


def test_a_command_that_does_not_train_refuses_to_run_once_per_process(monkeypatch, capsys, tmp_path):
    # Under a launcher every copy of `generate` would generate everything and write the same file.
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "answers.jsonl"
    assert main(["generate", "--model", "/no/such/model", "--prompts", "p.jsonl", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runs as one process" in err[0] and not out.exists()
