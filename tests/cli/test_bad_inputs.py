"""Every command on bad input files and bad output paths: exit code 2, one line on stderr that
starts `alignkit <command>: error:` and names the file or option, no traceback, and nothing
written that looks complete.

The commands run in-process through `alignkit.cli.main` (so monkeypatched I/O errors apply). A
model or judge path that does not exist shows that a bad input fails before any model load is
tried; training, which reads the tokenizer before its data, gets a tiny model.
"""
import builtins
import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from alignkit.cli import main
from alignkit.data.errors import DataError
from alignkit.data.readers import read_records, read_text
from tests.helpers.files import write_jsonl

NO_MODEL = "/no/such/model"  # a command that reached its model load would name this path instead
BINARY = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\x00\x10 not text at all"
# The files a run leaves when it completes; none may exist after a failed run.
COMPLETE = {"results.json", "report.html", "report.json", "summary.json", "final", "judgments.jsonl",
            "battles.jsonl", "grades.jsonl"}
ALL_KINDS = ("missing", "folder", "binary", "empty", "malformed", "eio", "denied")
# What the error line says for each kind of bad file (besides naming it); None: only the name.
SAYS = {"missing": "not found", "folder": "folder", "binary": "UTF-8", "empty": None, "malformed": "JSON",
        "eio": "Input/output error", "denied": "Permission denied"}

SFT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
OUTPUT = {"id": "0", "prompt": "q0", "response": "a"}
IFEVAL = {"key": 1, "prompt": "Write hi", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
RESULTS = {"format": "alignkit-eval-results", "version": 1, "command": "x", "meta": {},
           "sections": {"tables": [{"title": "t", "columns": ["a"], "rows": [[1]]}]}, "details": {}}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Good inputs for every option that is not under test, and a tiny model for training."""
    from alignkit.models.tiny import tiny_model, tiny_tokenizer

    root = tmp_path_factory.mktemp("good")
    tok = tiny_tokenizer()
    tiny_model(tok).save_pretrained(str(root / "tiny"))
    tok.save_pretrained(str(root / "tiny"))
    (root / "pairs.json").write_text(json.dumps([{"input": "q", "output_1": "a", "output_2": "b", "label": 1}]))
    (root / "rubric.txt").write_text("Score 5 if the answer is right.")
    (root / "results.json").write_text(json.dumps(RESULTS))
    return {
        "tiny": str(root / "tiny"),
        "prompts": write_jsonl(root / "prompts.jsonl", [{"prompt": "hi"}]),
        "outputs": write_jsonl(root / "outputs.jsonl", [OUTPUT]),
        "reference": write_jsonl(root / "reference.jsonl", [{**OUTPUT, "response": "b"}]),
        "ifeval": write_jsonl(root / "ifeval.jsonl", [IFEVAL]),
        "responses": write_jsonl(root / "responses.jsonl", [{"prompt": "Write hi", "response": "hi"}]),
        "questions": write_jsonl(root / "questions.jsonl", [{"question_id": 1, "category": "c", "turns": ["q"]}]),
        "answers": write_jsonl(root / "answers.jsonl", [{"question_id": 1, "turns": ["a"]}]),
        "items": write_jsonl(root / "items.jsonl", [{"id": 1, "instruction": "q", "response": "a"}]),
        "battles": write_jsonl(root / "battles.jsonl", [{"model_a": "x", "model_b": "y", "winner": "a"}]),
        "predictions": write_jsonl(root / "predictions.jsonl", [{"id": "pairs-0", "verdict": 1}]),
        "pairs": str(root / "pairs.json"), "rubric": str(root / "rubric.txt"), "results": str(root / "results.json"),
    }


def training(command: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    return (command, "model.name={tiny}", "data.train=[{bad}]", "train.output_dir={out}", "train.max_steps=1",
            "train.batch_size=1", "train.precision=fp32", "train.progress=false", "train.resume=none", *extra)


JUDGE = ("--judge", NO_MODEL, "--no-progress")
DATA_JOB = ("output_dir={out}", "generator.model=" + NO_MODEL, "progress=false")

# (id, argv template, extension of the bad file, kinds of bad file tried). Templates name the bad
# file {bad}, the run's output {out} and the good files of `env`.
INPUTS = [
    ("sft-jsonl", training("sft"), ".jsonl", ALL_KINDS),
    ("sft-json", training("sft"), ".json", ("binary", "malformed", "eio")),
    ("sft-csv", training("sft"), ".csv", ("binary", "eio")),
    ("dpo", training("dpo", ("reference_cache={out}-cache",)), ".jsonl",
     ("missing", "binary", "empty", "malformed", "eio")),
    ("rm", training("rm"), ".jsonl", ("missing", "binary", "malformed", "eio")),
    ("score", ("score", "--model", NO_MODEL, "--input", "{bad}", "--out", "{out}.jsonl"), ".jsonl", ALL_KINDS),
    ("rm-eval", ("rm-eval", "--model", NO_MODEL, "--data", "{bad}", "--out", "{out}.json"), ".jsonl",
     ("missing", "folder", "binary", "malformed", "eio")),
    ("generate", ("generate", "--model", NO_MODEL, "--prompts", "{bad}", "--out", "{out}.jsonl"), ".jsonl", ALL_KINDS),
    ("ifeval-prompts", ("eval", "ifeval", "--prompts", "{bad}", "--responses", "{responses}", "--out", "{out}.json"),
     ".jsonl", ALL_KINDS),
    ("ifeval-responses", ("eval", "ifeval", "--prompts", "{ifeval}", "--responses", "{bad}", "--out", "{out}.json"),
     ".jsonl", ALL_KINDS),
    ("pairwise-outputs", ("eval", "pairwise", "--outputs", "{bad}", "--reference", "{reference}", "--out", "{out}",
                          *JUDGE), ".jsonl", ALL_KINDS),
    ("pairwise-reference", ("eval", "pairwise", "--outputs", "{outputs}", "--reference", "{bad}", "--out", "{out}",
                            *JUDGE), ".jsonl", ("missing", "binary", "eio")),
    ("grade-items", ("eval", "grade", "--items", "{bad}", "--rubric", "{rubric}", "--out", "{out}", *JUDGE), ".jsonl",
     ALL_KINDS),
    ("grade-questions", ("eval", "grade", "--questions", "{bad}", "--answers", "{answers}", "--out", "{out}", *JUDGE),
     ".jsonl", ("missing", "folder", "binary", "malformed", "eio")),
    ("grade-answers", ("eval", "grade", "--questions", "{questions}", "--answers", "{bad}", "--out", "{out}", *JUDGE),
     ".jsonl", ("missing", "binary", "malformed")),
    ("grade-rubric", ("eval", "grade", "--items", "{items}", "--rubric", "{bad}", "--out", "{out}", *JUDGE), ".txt",
     ("missing", "folder", "binary", "empty", "eio", "denied")),
    ("leaderboard-battles", ("leaderboard", "--battles", "{bad}", "--out", "{out}", "--bootstrap", "5"), ".jsonl",
     ALL_KINDS),
    ("leaderboard-outputs", ("leaderboard", "--outputs", "{bad}", "{outputs}", "--out", "{out}", *JUDGE), ".jsonl",
     ("missing", "folder", "binary", "eio")),
    ("meta-eval-pairs", ("meta-eval", "--pairs", "{bad}", "--predictions", "{predictions}", "--out", "{out}"), ".json",
     ALL_KINDS),
    ("meta-eval-predictions", ("meta-eval", "--pairs", "{pairs}", "--predictions", "{bad}", "--out", "{out}"),
     ".jsonl", ("missing", "binary", "malformed", "eio")),
    ("report", ("report", "--results", "{bad}", "--out", "{out}"), ".json", ALL_KINDS),
    ("data-templates", ("data", "templates", "tasks=[{bad}]", "output_dir={out}"), ".yaml",
     ("missing", "folder", "binary", "eio")),
    ("data-self-instruct", ("data", "self-instruct", "seed_tasks={bad}", *DATA_JOB), ".jsonl", ALL_KINDS),
    ("data-evolve", ("data", "evolve", "instructions={bad}", *DATA_JOB), ".jsonl", ALL_KINDS),
    ("data-label", ("data", "label", "prompts=", "responses=[{bad}]", *DATA_JOB, "judge.model=" + NO_MODEL),
     ".jsonl", ALL_KINDS),
    ("data-critique", ("data", "critique", "responses={bad}", *DATA_JOB), ".jsonl", ALL_KINDS),
    ("data-contrast", ("data", "contrast", "prompts={bad}", *DATA_JOB), ".jsonl", ALL_KINDS),
    ("data-dedup", ("data", "dedup", "data=[{bad}]", "output_dir={out}", "progress=false"), ".jsonl", ALL_KINDS),
    ("data-decontaminate", ("data", "decontaminate", "data=[{responses}]", "eval_files=[{bad}]", "output_dir={out}",
                            "progress=false"), ".jsonl", ("missing", "folder", "binary", "malformed", "eio")),
    ("annotate-serve", ("annotate", "serve", "--db", "{out}.db", "--tasks", "{bad}", "--arena", "a=" + NO_MODEL,
                        "--arena", "b=" + NO_MODEL), ".jsonl", ALL_KINDS),
    ("annotate-tasks", ("annotate", "tasks", "--outputs", "{bad}", "{outputs}", "--out", "{out}.jsonl"), ".jsonl",
     ALL_KINDS),
]


def make_bad(kind: str, folder: Path, ext: str, monkeypatch) -> Path:
    """A bad input file of the given kind (a good file the system refuses to read, for eio and denied)."""
    path = folder / f"bad{ext}"
    if kind == "folder":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(BINARY)
    elif kind == "empty":
        path.write_text("")
    elif kind == "malformed":
        path.write_text("{oops\n" if ext == ".jsonl" else '[{"messages": [')
    elif kind in ("eio", "denied"):
        path.write_text("{}\n")  # never read
        # Tests run as root, where chmod 000 does not stop a read: refuse the open instead.
        code = errno.EIO if kind == "eio" else errno.EACCES
        refuse_open(monkeypatch, path, OSError(code, os.strerror(code), str(path)))
    return path


def refuse_open(monkeypatch, path: Path, error: OSError) -> None:
    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(file) == str(path):
            raise error
        return real_open(file, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", guarded)


def fill(template, env: dict, **names) -> list[str]:
    return [part.format(**env, **names) for part in template]


def assert_one_line_error(code: int, err: str, argv: list[str], *names: str) -> str:
    """Exit code 2 and one stderr line, `alignkit <command>: error: ...`, naming each of `names`."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, err
    command = argv[0] + (f"( {argv[1]})?" if argv[0] in ("eval", "data", "annotate") else "")
    assert re.match(rf"alignkit {command}: error: ", lines[0]), lines[0]
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def assert_nothing_complete(out: Path) -> None:
    for candidate in (out, Path(f"{out}.jsonl"), Path(f"{out}.json")):
        assert not candidate.is_file(), f"{candidate} was written"
        if candidate.is_dir():
            left = {path.name for path in candidate.rglob("*")}
            assert not left & COMPLETE, f"{candidate} holds {sorted(left & COMPLETE)}"


@pytest.mark.parametrize("template, ext, kind", [
    pytest.param(template, ext, kind, id=f"{name}-{kind}")
    for name, template, ext, kinds in INPUTS for kind in kinds])
def test_a_bad_input_file_is_one_line_naming_it(tmp_path, env, monkeypatch, capsys, template, ext, kind):
    bad = make_bad(kind, tmp_path, ext, monkeypatch)
    out = tmp_path / "out"
    argv = fill(template, env, bad=bad, out=out)
    code = main(argv)
    line = assert_one_line_error(code, capsys.readouterr().err, argv, str(bad))
    if SAYS[kind]:
        assert SAYS[kind] in line
    assert NO_MODEL not in line  # the input was read before any model load was tried
    assert_nothing_complete(out)


# (id, argv template, what the existing {target} is: "file" or "folder"). The model or judge does
# not exist: the output must be refused before it is looked for.
OUTPUTS = [
    ("generate", ("generate", "--model", NO_MODEL, "--prompts", "{prompts}", "--out", "{target}"), "folder"),
    ("score", ("score", "--model", NO_MODEL, "--input", "{outputs}", "--out", "{target}"), "folder"),
    ("rm-eval", ("rm-eval", "--model", NO_MODEL, "--data", "{pairs}", "--out", "{target}"), "folder"),
    ("ifeval", ("eval", "ifeval", "--prompts", "{ifeval}", "--model", NO_MODEL, "--out", "{target}"), "folder"),
    ("pairwise", ("eval", "pairwise", "--outputs", "{outputs}", "--reference", "{reference}", "--out", "{target}",
                  *JUDGE), "file"),
    ("grade", ("eval", "grade", "--items", "{items}", "--rubric", "{rubric}", "--out", "{target}", *JUDGE), "file"),
    ("leaderboard", ("leaderboard", "--battles", "{battles}", "--out", "{target}", "--bootstrap", "5"), "file"),
    ("meta-eval", ("meta-eval", "--pairs", "{pairs}", "--predictions", "{predictions}", "--out", "{target}"), "file"),
    ("report", ("report", "--results", "{results}", "--out", "{target}"), "file"),
    ("annotate-tasks", ("annotate", "tasks", "--outputs", "{outputs}", "--out", "{target}"), "folder"),
    ("annotate-export", ("annotate", "export", "--db", "/no/such.db", "--what", "pairs", "--out", "{target}"),
     "folder"),
    ("annotate-agreement", ("annotate", "agreement", "--db", "/no/such.db", "--out", "{target}"), "file"),
]


@pytest.mark.parametrize("template, existing", [pytest.param(t, e, id=n) for n, t, e in OUTPUTS])
def test_an_output_of_the_wrong_kind_is_refused_before_any_work(tmp_path, env, capsys, template, existing):
    target = tmp_path / "taken"
    if existing == "folder":
        target.mkdir()
    else:
        target.write_text("keep me")
    argv = fill(template, env, target=target)
    line = assert_one_line_error(main(argv), capsys.readouterr().err, argv, "--out", str(target))
    assert "a file is needed" in line if existing == "folder" else "a folder is needed" in line
    assert (list(target.iterdir()) == []) if existing == "folder" else target.read_text() == "keep me"


@pytest.mark.parametrize("template", [pytest.param(t, id=n) for n, t, _ in OUTPUTS])
def test_an_output_under_a_file_is_refused_before_any_work(tmp_path, env, capsys, template):
    blocker = tmp_path / "plain.txt"
    blocker.write_text("keep me")
    target = blocker / "sub" / "out.json"
    argv = fill(template, env, target=target)
    line = assert_one_line_error(main(argv), capsys.readouterr().err, argv, "--out", str(blocker))
    assert "is a file" in line and blocker.read_text() == "keep me"


def test_a_judge_cache_that_is_a_folder_is_refused_before_the_judge_loads(tmp_path, env, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    argv = fill(("eval", "pairwise", "--outputs", "{outputs}", "--reference", "{reference}", "--out", "{out}",
                 "--cache", "{cache}", *JUDGE), env, out=tmp_path / "run", cache=cache)
    line = assert_one_line_error(main(argv), capsys.readouterr().err, argv, "--cache", str(cache))
    assert "a file is needed" in line and not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, names", [
    (["report", "--results", "{folder}", "--out", "{out}"], ["{folder}", "is a folder"]),
    (["meta-eval", "--pairs", "{binary}", "--predictions", "{predictions}", "--out", "{out}"],
     ["{binary}:1:", "UTF-8"]),
    (["generate", "--model", NO_MODEL, "--prompts", "{prompts}", "--out", "{folder}"], ["--out {folder}"]),
], ids=["report-results-folder", "meta-eval-binary-pairs", "generate-out-folder"])
def test_the_installed_command_prints_no_traceback(tmp_path, env, argv, names):
    """The same through a real process: exit status 2 and one line, nothing else on stderr."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "bin.json").write_bytes(BINARY)
    paths = {"folder": tmp_path / "folder", "binary": tmp_path / "bin.json", "out": tmp_path / "out"}
    argv = fill(argv, env, **paths)
    proc = subprocess.run([sys.executable, "-m", "alignkit.cli", *argv], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ALIGNKIT_DEBUG": ""})
    assert proc.returncode == 2 and proc.stdout == ""
    assert_one_line_error(proc.returncode, proc.stderr, argv, *fill(names, env, **paths))
    assert_nothing_complete(tmp_path / "out")


def test_an_io_error_in_the_middle_of_a_file_names_it(tmp_path, monkeypatch):
    path = tmp_path / "data.jsonl"
    write_jsonl(path, [SFT, SFT])
    real_open = builtins.open

    class FailsAfterOneLine:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def __iter__(self):
            yield next(iter(self.handle))
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    def flaky(file, *args, **kwargs):
        handle = real_open(file, *args, **kwargs)
        return FailsAfterOneLine(handle) if os.path.abspath(file) == str(path) else handle
    monkeypatch.setattr(builtins, "open", flaky)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: cannot read: Input/output error$"):
        list(read_records(path))


@pytest.mark.parametrize("ext", [".json", ".csv"])
def test_a_bad_byte_is_placed_at_its_line(tmp_path, ext):
    path = tmp_path / f"data{ext}"
    text = '[\n{"a": 1},\n{"a": "' if ext == ".json" else "a,b\n1,2\n"
    path.write_bytes(text.encode() + b"\xff\xfe" + (b'"}\n]\n' if ext == ".json" else b",3\n"))
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:3: not valid UTF-8 text \(invalid start byte"):
        list(read_records(path))


def test_read_text_keeps_text_and_drops_a_bom(tmp_path):
    path = tmp_path / "rubric.txt"
    path.write_bytes(b"\xef\xbb\xbfScore 1 to 5\n")
    assert read_text(path) == "Score 1 to 5\n"


def test_a_record_with_nothing_to_score_stops_score_before_the_model_loads(tmp_path, capsys):
    records = write_jsonl(tmp_path / "answers.jsonl", [OUTPUT, {"id": "1", "prompt": "q1"}])
    out = tmp_path / "scored.jsonl"
    argv = ["score", "--model", NO_MODEL, "--input", records, "--out", str(out)]
    line = assert_one_line_error(main(argv), capsys.readouterr().err, argv, f"{records}:2")
    assert NO_MODEL not in line and not out.exists()
