"""Atomic writes: a crash at any point before the rename leaves the old file or folder whole and nothing
that looks like a complete new one; a kill's temporaries are found by remove_leftovers."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from alignkit.atomic_write import (TMP_PREFIX, atomic_dir, atomic_file, remove_leftovers, write_json_atomic,
                                   write_jsonl_atomic, write_text_atomic)
from tests.helpers.crash import Crash


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_text_json_and_jsonl_are_written_whole(tmp_path):
    write_text_atomic(tmp_path / "sub" / "a.txt", "héllo\n")
    write_json_atomic(tmp_path / "b.json", {"x": [1, 2], "name": "é"})
    write_jsonl_atomic(tmp_path / "c.jsonl", ({"i": i} for i in range(3)))
    assert (tmp_path / "sub" / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert json.loads((tmp_path / "b.json").read_text(encoding="utf-8")) == {"x": [1, 2], "name": "é"}
    rows = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert rows == [{"i": i} for i in range(3)]
    assert listing(tmp_path) == ["b.json", "c.jsonl", "sub"]


def test_json_refuses_nan_unless_allowed(tmp_path):
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "a.json", {"loss": float("nan")})
    assert not (tmp_path / "a.json").exists() and listing(tmp_path) == []
    write_json_atomic(tmp_path / "a.json", {"loss": float("nan")}, allow_nan=True)
    assert "NaN" in (tmp_path / "a.json").read_text()


def test_an_error_mid_file_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")

    def rows():
        yield {"i": 0}
        raise Crash()

    with pytest.raises(Crash):
        write_jsonl_atomic(target, rows())
    assert target.read_text() == "old\n" and listing(tmp_path) == ["out.jsonl"]


def test_an_error_mid_folder_keeps_the_old_folder_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "final"
    target.mkdir()
    (target / "model.bin").write_text("old")
    with pytest.raises(Crash):
        with atomic_dir(target) as tmp:
            (tmp / "model.bin").write_text("new, half")
            raise Crash()
    assert listing(tmp_path) == ["final"] and listing(target) == ["model.bin"]
    assert (target / "model.bin").read_text() == "old"


def test_a_folder_replaces_the_old_one_whole(tmp_path):
    target = tmp_path / "final"
    target.mkdir()
    (target / "stale.bin").write_text("old")
    with atomic_dir(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(TMP_PREFIX)  # same file system, findable name
        (tmp / "adapter").mkdir()
        (tmp / "adapter" / "weights.bin").write_text("new")
        (tmp / "model.bin").write_text("new")
    assert listing(tmp_path) == ["final"] and listing(target) == ["adapter", "model.bin"]


def test_files_and_folders_reach_the_disk_before_the_rename_and_the_rename_after(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    with atomic_dir(tmp_path / "final") as tmp:
        (tmp / "adapter").mkdir()
        (tmp / "adapter" / "a.bin").write_text("a")
        (tmp / "b.bin").write_text("b")
    names = [os.path.relpath(path, tmp) for path in synced]
    assert names.index(os.path.join("adapter", "a.bin")) < names.index("adapter") < names.index(".")
    assert names.index("b.bin") < names.index(".")
    assert synced[-1] == str(tmp_path)  # the folder holding the new name, after the rename
    synced.clear()
    write_text_atomic(tmp_path / "a.txt", "x")
    assert os.path.basename(synced[0]).startswith(TMP_PREFIX) and synced[1:] == [str(tmp_path)]


KILLED_MID_WRITE = textwrap.dedent("""
    import os, sys
    from alignkit.atomic_write import atomic_dir, atomic_file
    target, kind = sys.argv[1], sys.argv[2]
    if kind == "file":
        with atomic_file(target) as tmp, open(tmp, "w") as f:
            f.write("new, half")
            f.flush()
            os._exit(9)  # no cleanup runs, as after a kill
    with atomic_dir(target) as tmp:
        (tmp / "model.bin").write_text("new, half")
        os._exit(9)
""")


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_a_kill_mid_write_leaves_the_old_output_and_a_temporary_that_remove_leftovers_finds(tmp_path, kind):
    target = tmp_path / "out"
    if kind == "file":
        target.write_text("old")
    else:
        target.mkdir()
        (target / "model.bin").write_text("old")
    done = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(target), kind], cwd=os.getcwd())
    assert done.returncode == 9
    old = target if kind == "file" else target / "model.bin"
    assert old.read_text() == "old"
    leftovers = [name for name in listing(tmp_path) if name != "out"]
    assert len(leftovers) == 1 and leftovers[0].startswith(TMP_PREFIX + "out")
    remove_leftovers(tmp_path)
    assert listing(tmp_path) == ["out"] and old.read_text() == "old"


def test_atomic_file_takes_any_writer(tmp_path):
    with atomic_file(tmp_path / "blob.bin") as tmp:
        tmp.write_bytes(b"\0\1")
    assert (tmp_path / "blob.bin").read_bytes() == b"\0\1" and listing(tmp_path) == ["blob.bin"]
