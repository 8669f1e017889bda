"""Instruction data for the speed benches that is not the project's own: questions about the Python
standard library answered by its docstrings. Real English of realistic length (about 100 to 500
tokens an answer), available offline on every machine, the same for every run on one Python version.

SFT rows: {"messages": [user question, assistant docstring]}. Preference rows: TRL's
prompt/chosen/rejected, the rejected answer being another object's docstring of similar length.
"""
from __future__ import annotations

import importlib
import inspect
import random
import re
import sys
import warnings

# Every standard-library module but those that act when imported or need a display.
SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "pydoc_data", "lib2to3", "ensurepip",
        "venv", "msilib", "winreg", "winsound", "_winapi", "nt", "msvcrt", "xxsubtype", "xxlimited", "__hello__"}
# Numerical libraries alignkit installs add longer, example-rich docstrings.
MODULES = tuple(m for m in sorted(sys.stdlib_module_names) if not m.startswith("_") and m not in SKIP) + (
    "numpy", "numpy.linalg", "numpy.random", "numpy.fft", "numpy.ma", "scipy.stats", "scipy.optimize",
    "scipy.linalg", "scipy.signal", "scipy.special", "scipy.integrate", "scipy.interpolate", "scipy.sparse")
QUESTIONS = ("What does `{name}` in Python's `{module}` module do?",
             "Explain how to use `{name}` from the `{module}` module.",
             "I found `{name}` in `{module}`. What is it for, and what does it take?",
             "Describe `{module}.{name}` for a colleague who has not used it.")


def _docstrings(min_chars: int, max_chars: int) -> list[tuple[str, str, str]]:
    """(module, qualified name, cleaned docstring) of public objects, sorted by module and name."""
    # What a module exposes can depend on what else was imported first: importing transformers (which
    # every bench does anyway) before walking the modules makes the set the same for every caller.
    import transformers  # noqa: F401

    found = []
    with warnings.catch_warnings():  # deprecated modules and attributes warn when imported or read
        warnings.simplefilter("ignore")
        for module_name in MODULES:
            found += _module_docstrings(module_name, min_chars, max_chars)
    return found


def _module_docstrings(module_name: str, min_chars: int, max_chars: int) -> list[tuple[str, str, str]]:
    try:
        module = importlib.import_module(module_name)
    except Exception:  # not built on this platform
        return []
    found = []
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", module_name) != module_name:
            continue
        members = [(name, obj)]
        if inspect.isclass(obj):
            members += [(f"{name}.{m}", v) for m, v in sorted(vars(obj).items()) if not m.startswith("_")]
        for qualname, member in members:
            # only functions and classes, with a docstring of their own (not one inherited from a type)
            own = getattr(member, "__doc__", None) if inspect.isroutine(member) or inspect.isclass(member) else None
            doc = inspect.cleandoc(own) if isinstance(own, str) else None
            if doc and min_chars <= len(doc) <= max_chars:
                found.append((module_name, qualname, re.sub(r"[ \t]+\n", "\n", doc.strip())))
    return found


def sft_rows(count: int, seed: int = 0, min_chars: int = 250, max_chars: int = 2000) -> list[dict]:
    """`count` question/docstring conversations, in a seeded shuffled order."""
    docs = _docstrings(min_chars, max_chars)
    if len(docs) < count:
        raise SystemExit(f"only {len(docs)} docstrings between {min_chars} and {max_chars} characters")
    rng = random.Random(seed)
    rng.shuffle(docs)
    return [{"messages": [{"role": "user", "content": rng.choice(QUESTIONS).format(module=m, name=n)},
                          {"role": "assistant", "content": doc}]} for m, n, doc in docs[:count]]


def pref_rows(count: int, seed: int = 0) -> list[dict]:
    """`count` pairs: the asked-about object's docstring chosen, a docstring of similar length rejected."""
    rows = sft_rows(2 * count, seed)
    asked, others = rows[:count], sorted(rows[count:], key=lambda r: len(r["messages"][1]["content"]))
    by_length = sorted(range(count), key=lambda i: len(asked[i]["messages"][1]["content"]))
    out: list[dict] = [{}] * count
    for rank, i in enumerate(by_length):  # the k-th shortest chosen meets the k-th shortest rejected
        out[i] = {"prompt": asked[i]["messages"][0]["content"], "chosen": asked[i]["messages"][1]["content"],
                  "rejected": others[rank]["messages"][1]["content"]}
    return out


def pair_conversations(row: dict) -> list[list[dict]]:
    """The chosen and the rejected conversation of a preference row."""
    return [[{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row[side]}]
            for side in ("chosen", "rejected")]


def within_length(rows: list[dict], max_length: int, conversations=lambda row: [row["messages"]]) -> list[dict]:
    """The rows all of whose conversations fit in `max_length` tokens of the embedded model's chat template,
    so that no framework truncates what it trains on."""
    from transformers import AutoTokenizer

    from alignkit.models.loading import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())

    def length(messages: list[dict]) -> int:
        return len(tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])

    return [row for row in rows if all(length(m) <= max_length for m in conversations(row))]
