"""The pipeline demo on the embedded model: held-out prompts answered before and after training.

The demo teaches a verifiable behaviour (answer in the format the user asks for: a JSON object,
capital letters, or a fixed closing phrase) with the project's own instruction data, so the
before/after figure is a measured fraction of held-out prompts, not an impression.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from alignkit.demo_data.build import ENDING

DEMO_DATA = Path(__file__).parent / "demo_data"


@dataclass
class DemoConfig:
    out_dir: str = "runs/demo"
    model: str = "embedded"
    sft_steps: int = 120
    batch_size: int = 8
    lr: float = 1e-4
    max_new_tokens: int = 48
    heldout_limit: int = 0


def follows_format(fmt: str, response: str) -> bool:
    text = response.strip()
    if fmt == "json":
        try:
            value = json.loads(text)
        except ValueError:
            return False
        return isinstance(value, dict) and set(value) == {"answer"}
    if fmt == "upper":
        letters = [c for c in text if c.isalpha()]
        return bool(letters) and all(c.isupper() for c in letters)
    if fmt == "ending":
        return text.endswith(ENDING) and len(text) > len(ENDING)
    raise ValueError(f"unknown format {fmt!r}")


def load_heldout(limit: int = 0) -> list[dict]:
    rows = [json.loads(line) for line in open(DEMO_DATA / "heldout.jsonl")]
    return rows[:limit] if limit else rows


def score(rows: list[dict], responses: list[str]) -> dict:
    per_format: dict[str, list[int]] = {}
    correct = 0
    for row, resp in zip(rows, responses):
        per_format.setdefault(row["format"], []).append(int(follows_format(row["format"], resp)))
        correct += int(row["answer"].lower() in resp.lower())
    followed = sum(sum(v) for v in per_format.values())
    return {"n": len(rows), "format_following": followed / len(rows),
            "per_format": {k: sum(v) / len(v) for k, v in sorted(per_format.items())},
            "answer_mentioned": correct / len(rows)}


def answer(model, tokenizer, rows: list[dict], max_new_tokens: int, desc: str) -> list[str]:
    from alignkit.generation.backend import SamplingParams
    from alignkit.generation.local import generate_texts
    from alignkit.generation.local import LocalBackend

    backend = LocalBackend(model, tokenizer, batch_size=16)
    prompts = [[m for m in row["messages"] if m["role"] != "assistant"] for row in rows]
    outs = generate_texts(backend, prompts, SamplingParams(max_tokens=max_new_tokens), desc=desc)
    return [o[0].text for o in outs]


def run_demo(cfg: DemoConfig) -> dict:
    from alignkit.data.readers import DataSpec
    from alignkit.models.loading import load_model
    from alignkit.training.config import TrainConfig
    from alignkit.training.sft import SFTConfig, SFTDataConfig, run_sft
    from alignkit.models.config import ModelConfig

    t0 = time.perf_counter()
    os.makedirs(cfg.out_dir, exist_ok=True)
    model, tok = load_model(cfg.model)
    rows = load_heldout(cfg.heldout_limit)
    print(f"[demo] {len(rows)} held-out prompts; answering with the base model", flush=True)
    before = answer(model, tok, rows, cfg.max_new_tokens, "before")

    print(f"[demo] SFT: {cfg.sft_steps} steps on {DEMO_DATA / 'sft_train.jsonl'}", flush=True)
    sft_cfg = SFTConfig(
        model=ModelConfig(name=cfg.model),
        data=SFTDataConfig(train=[DataSpec(str(DEMO_DATA / "sft_train.jsonl"))], max_length=256),
        train=TrainConfig(output_dir=os.path.join(cfg.out_dir, "sft"), max_steps=cfg.sft_steps,
                          batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=10, precision="bf16",
                          resume="none", seed=0))
    result = run_sft(sft_cfg, model=model, tokenizer=tok)
    after = answer(model, tok, rows, cfg.max_new_tokens, "after SFT")

    results = {"before": score(rows, before), "after_sft": score(rows, after),
               "sft": {"steps": result.steps, "tokens": result.tokens, "seconds": round(result.seconds, 1),
                       "first_loss": result.history[0]["loss"], "final_loss": result.history[-1]["loss"]},
               "seconds": round(time.perf_counter() - t0, 1)}
    with open(os.path.join(cfg.out_dir, "responses.jsonl"), "w") as f:
        for row, b, a in zip(rows, before, after):
            f.write(json.dumps({"prompt": row["messages"][0]["content"], "format": row["format"],
                                "before": b, "after_sft": a}) + "\n")
    with open(os.path.join(cfg.out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    _print_table(results)
    return results


def _print_table(results: dict) -> None:
    stages = [k for k in ("before", "after_sft") if k in results]
    print("\n[demo] held-out prompts following the requested format")
    print(f"{'stage':<12}{'overall':>9}" + "".join(f"{f:>9}" for f in results["before"]["per_format"]) + f"{'answer':>9}")
    for s in stages:
        r = results[s]
        print(f"{s:<12}{r['format_following']:>9.2f}" + "".join(f"{v:>9.2f}" for v in r["per_format"].values())
              + f"{r['answer_mentioned']:>9.2f}")
    print(f"[demo] SFT {results['sft']['steps']} steps, loss {results['sft']['first_loss']:.3f} -> "
          f"{results['sft']['final_loss']:.3f}, {results['sft']['tokens'] / max(results['sft']['seconds'], 1e-9):.0f} tok/s; "
          f"total {results['seconds']:.0f} s")
