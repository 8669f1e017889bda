"""bench/gpu_check.sh parses, and on a machine without an NVIDIA driver stops at once with one line saying
so, before it creates anything or installs a package."""
import os
import shutil
import subprocess

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "gpu_check.sh")


def test_the_script_parses():
    subprocess.run(["bash", "-n", SCRIPT], check=True)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")
def test_without_a_gpu_it_stops_at_once_with_one_line(tmp_path):
    out = tmp_path / "check"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GPU_CHECK_OUT": str(out),
           "GPU_CHECK_VENV": str(tmp_path / "venv")}
    done = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "nvidia-smi" in lines[0] and "GPU_CHECK_ALLOW_CPU=1" in lines[0], done.stderr
    assert done.stdout == "" and not out.exists() and not (tmp_path / "venv").exists()
