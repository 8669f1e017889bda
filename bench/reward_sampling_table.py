"""The table of issue 11: sampling-with-a-reward methods on the demo's format task, side by side.

Every method starts from the same SFT model (the demo's SFT: 10 steps on the format task), selects or
pairs with the same reward, the format check (the verifiable reward, 0 or 1) plus the demo's reward model
(configs/rm.yaml, 60 Bradley-Terry steps on the demo pairs), and is measured on the same 78 held-out
prompts: greedy answers (best-of-n: the chosen sample of n at temperature 1) scored for format compliance
and by the reward model. Each method runs as its documented command (`alignkit <method> --config
configs/<method>.yaml ...`) with only the model, the rewards and the output folder overridden, one after
the other in child processes, timed by wall clock (model loads and held-out measurements included).

    python bench/reward_sampling_table.py --work /tmp/alignkit-rs-table

`--reuse` keeps a finished SFT model, reward model or method folder in --work instead of running it again
(the table then shows the times recorded the first time). Results go to --work/table.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELDOUT = ROOT / "alignkit" / "demo" / "data" / "heldout.jsonl"


def run(cmd: list[str], log: Path) -> float:
    """Run one alignkit command to the end, its output to `log`; the wall seconds, or exit on failure."""
    print("$ alignkit " + " ".join(cmd), flush=True)
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.run([sys.executable, "-m", "alignkit", *cmd], stdout=out, stderr=subprocess.STDOUT,
                              cwd=ROOT, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    seconds = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}); the last lines of {log}:\n" + "".join(open(log).readlines()[-15:]))
    print(f"  {seconds:.0f} s", flush=True)
    return seconds


def timed(work: Path, name: str, cmd: list[str], done: Path, reuse: bool) -> float:
    """Wall seconds of `cmd`, run unless --reuse finds `done` (then the seconds recorded before)."""
    stamp = work / f"{name}.seconds"
    if reuse and done.exists():  # a folder made some other way has no recorded time
        return float(stamp.read_text()) if stamp.exists() else float("nan")
    seconds = run(cmd, work / f"{name}.log")
    stamp.write_text(f"{seconds}\n")
    return seconds


def heldout_row(name: str, heldout: dict, seconds: float | None, note: str = "") -> dict:
    parts = heldout["components"]
    return {"method": name, "compliance": parts["format"], "rm": parts["rm"], "reward": heldout["reward_mean"],
            "seconds": seconds, "note": note}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/alignkit-rs-table")
    p.add_argument("--reuse", action="store_true")
    a = p.parse_args()
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)

    sft, rm = work / "sft", work / "rm"
    times = {"sft": timed(work, "sft", ["sft", "--config", "configs/sft.yaml", f"train.output_dir={sft}",
                                        "train.max_steps=10", "data.eval_fraction=0", "train.eval_every=0",
                                        "train.save_every=0", "train.progress=false", "train.if_exists=overwrite"],
                          sft / "final", a.reuse),
             "rm": timed(work, "rm", ["rm", "--config", "configs/rm.yaml", f"train.output_dir={rm}",
                                      "train.progress=false", "train.if_exists=overwrite"], rm / "final", a.reuse)}
    common = [f"model.name={sft / 'final'}",
              f"rewards=[{{kind: format, weight: 1.0}}, {{kind: rm, path: {rm / 'final'}, weight: 1.0}}]"]

    def method(name: str, command: str, out_key: str, extra: list[str] = (), done: str = "report.json") -> Path:
        out = work / name
        if not (a.reuse and (out / done).exists()):
            shutil.rmtree(out, ignore_errors=True)  # a fresh run, whatever an earlier one left
        times[name] = timed(work, name, [command, "--config", f"configs/{command.replace('-', '_')}.yaml", *common,
                                         f"{out_key}={out}", *extra], out / done, a.reuse)
        return out

    rows = []
    for n in (1, 4, 16):
        out = method(f"best_of_{n}", "best-of-n", "output_dir",
                     [f"sampling.n={n}", f"sampling.cache={work / f'best_of_{n}' / 'samples.sqlite'}",
                      "progress=false"])
        report = json.loads((out / "report.json").read_text())
        top = report["curve"][-1]
        rows.append({"method": f"best-of-{n} (temperature 1)", "compliance": top["components"]["format"],
                     "rm": top["components"]["rm"], "reward": top["reward"], "seconds": times[f"best_of_{n}"],
                     "note": f"KL {top['kl']:.2f} nats"})
    ei = json.loads((method("expert_iteration", "expert-iteration", "output_dir") / "report.json").read_text())
    records = ei["records"]
    rows.insert(0, heldout_row("SFT alone (greedy)", records[0]["heldout"], None))
    overhead = times["expert_iteration"] - sum(r["seconds"]["total"] for r in records)
    for k in (1, 3):
        upto = overhead + sum(r["seconds"]["total"] for r in records[:k + 1])
        rows.append(heldout_row(f"expert iteration, {k} round{'s' if k > 1 else ''}", records[k]["heldout"], upto,
                                "" if k == 3 else "the first round of the 3-round run"))
    rso = json.loads((method("rso", "rso", "output_dir", [f"sampling.cache={work / 'rso' / 'samples.sqlite'}"])
                      / "report.json").read_text())
    rows.append(heldout_row("RSO + DPO", rso["heldout"]["after"], times["rso"],
                            f"{rso['accepted']} of {rso['candidates']} candidates accepted (first-pass chance "
                            f"{rso['expected_acceptance']:.2f}), {rso['pairs']} pairs"))
    online = method("online_dpo", "online-dpo", "train.output_dir", done="heldout.json")
    rows.append(heldout_row("online DPO", json.loads((online / "heldout.json").read_text())["after"],
                            times["online_dpo"]))
    it = json.loads((method("iterative_dpo", "iterative-dpo", "output_dir") / "report.json").read_text())
    rows.append(heldout_row("iterative DPO, 2 rounds", it["records"][-1]["heldout"], times["iterative_dpo"]))

    print(f"\nSmolLM2-135M after the demo's SFT; reward = format check + the demo's reward model; "
          f"{len(open(HELDOUT).readlines())} held-out prompts; 2 threads")
    print("| method | held-out compliance | reward-model score | reward (sum) | wall time | |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        wall = "" if r["seconds"] is None else f"{r['seconds'] / 60:.1f} min"
        print(f"| {r['method']} | {r['compliance']:.3f} | {r['rm']:.3f} | {r['reward']:.3f} | {wall} | {r['note']} |")
    print(f"(preparation: SFT {times['sft']:.0f} s, reward model {times['rm']:.0f} s)")
    (work / "table.json").write_text(json.dumps({"rows": rows, "times": times}, indent=1))


if __name__ == "__main__":
    main()
