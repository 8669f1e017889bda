"""Run by tests/training/test_distributed.py under torchrun: a few SFT steps with data parallelism (gloo), joined
and left through alignkit.training.distributed as the CLI does."""
import contextlib
import io
import json
import os
import sys

import torch

from alignkit.models.tiny import tiny_model, tiny_tokenizer
from alignkit.training import distributed
from alignkit.training.config import TrainConfig
from alignkit.training.loop import train
from alignkit.training.sft import SFTObjective
from tests.helpers.training import make_examples


def gloo_threads() -> list[str]:
    """Names of this process's threads that belong to gloo (Linux names threads under /proc)."""
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                names.append(f.read().strip())
        except OSError:  # the thread ended meanwhile
            continue
    return sorted(n for n in names if "gloo" in n)


def reference_summary(model, tok, cache_dir: str) -> str:
    """What pref_run.prepare_reference prints on this rank for log-probs no rank has cached yet."""
    from alignkit.data.pref_examples import build_examples
    from alignkit.training.pref_run import PrefConfig, prepare_reference

    items = [([{"role": "user", "content": f"say {i}"}], [[{"role": "assistant", "content": "hi there"}],
                                                         [{"role": "assistant", "content": "no"}]],
              None, None, "pairs.jsonl", i + 1, "line") for i in range(4)]
    examples = build_examples(items, tok, max_length=64)[0]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        prepare_reference(PrefConfig(loss="dpo", reference_cache=cache_dir), model, tok, examples)
    return printed.getvalue()


def main(out_dir: str, batch_size: int) -> None:
    assert distributed.init_from_env()
    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    cfg = TrainConfig(output_dir=out_dir, lr=1e-3, batch_size=batch_size, max_steps=3, warmup_steps=1,
                      precision="fp32", progress=False, seed=1)
    model = tiny_model(tok)
    result = train(model, SFTObjective(), make_examples(tok, 12), cfg)
    rank = distributed.rank_world()[0]
    reference = reference_summary(model, tok, f"{out_dir}/refcache")
    before = gloo_threads()
    distributed.teardown()
    # Threads still alive here outlive the interpreter, which is what aborted runs at exit.
    report = {"history": result.history, "weights": float(sum(p.detach().double().sum() for p in model.parameters())),
              "gloo_threads": {"before_teardown": before, "after_teardown": gloo_threads()}, "reference": reference}
    with open(f"{out_dir}/result-{rank}.json", "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
