"""Data parallelism through torch.distributed: two processes with half the batch each train the
same model as one process with the whole batch."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alignkit.models.tiny import tiny_model, tiny_tokenizer
from alignkit.training.loop import train
from alignkit.training.sft import SFTObjective
from tests.test_loop import cfg, make_examples

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="torchrun missing")
def test_two_process_data_parallel_equals_one_process(tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29517",
                           str(ROOT / "tests" / "dist_sft_worker.py"), str(tmp_path), "2"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parallel = json.loads((tmp_path / "result.json").read_text())

    tok = tiny_tokenizer()
    model = tiny_model(tok)
    single = train(model, SFTObjective(), make_examples(tok, 12), cfg(tmp_path / "single", batch_size=4))
    for a, b in zip(parallel["history"], single.history):
        assert a["units"] == b["units"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    weights = float(sum(p.detach().double().sum() for p in model.parameters()))
    assert parallel["weights"] == pytest.approx(weights, rel=1e-6)
