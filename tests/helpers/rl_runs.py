"""RL runs and objectives in tests: prompt files, `alignkit rl` arguments for a tiny model, and a hand-built
micro-batch whose old and reference log-probs are a little off the model's."""
import json

import torch

from alignkit.config import load_config
from alignkit.rl.buffer import Sample, micro_batch
from alignkit.rl.logprobs import completion_logprobs
from alignkit.rl.run import RLConfig
from tests.helpers.files import read_jsonl  # noqa: F401  (tests import it from here too)

REWARD = "tests.helpers.rl_rewards:"
QUESTIONS = ["what is two plus two", "name a colour", "say hello", "count to three", "write a word",
             "answer briefly", "pick a number", "tell me a fact"]


def hand_batch(tok, model, seed=0):
    """Four samples of different lengths, old log-probs a little off the model's, a reference further off."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i, (p, c) in enumerate([(5, 3), (7, 6), (4, 1), (6, 4)]):
        ids = torch.randint(10, len(tok), (p + c,), generator=g).tolist()
        samples.append(Sample(ids[:p], ids[p:], "", group=i // 2, truncated=False,
                              reward=float(i), advantage=float(torch.randn(1, generator=g))))
    batch = micro_batch(samples)
    with torch.no_grad():
        lp = completion_logprobs(model, batch, 0.7)
    batch["old_logprobs"] = lp + (torch.rand(lp.shape, generator=g) - 0.5) * 0.6
    batch["ref_logprobs"] = lp + (torch.rand(lp.shape, generator=g) - 0.5) * 1.0
    return batch


def write_prompts(path):
    with open(path, "w") as f:
        f.writelines(json.dumps({"messages": [{"role": "user", "content": q}], "id": i}) + "\n"
                     for i, q in enumerate(QUESTIONS))
    return str(path)


def run_args(model_dir, prompts, out, reward="completion_length", **extra):
    args = {"model.name": model_dir, "prompts": f"[{prompts}]",
            "rewards": f'[{{kind: python, function: "{REWARD}{reward}"}}]',
            "rollout.prompts_per_step": 2, "rollout.group_size": 3, "rollout.max_tokens": 6,
            "rollout.grad_accum": 2, "rollout.seed": 5, "train.output_dir": str(out), "train.max_steps": 3,
            "train.precision": "fp32", "train.lr": 1e-3, "train.progress": "false", "train.seed": 1,
            "samples_per_step": 2}
    args.update(extra)
    return [f"{k}={v}" for k, v in args.items()]


def learning_cfg(model_dir, prompts, out, steps, **extra):
    return load_config(RLConfig, None, run_args(
        model_dir, prompts, out, reward="even_first_char", **{
            "rollout.prompts_per_step": 4, "rollout.group_size": 8, "rollout.max_tokens": 2,
            "rollout.grad_accum": 1, "train.max_steps": steps, "train.lr": 1e-2, "train.schedule": "constant",
            "samples_per_step": 0, **extra}))
