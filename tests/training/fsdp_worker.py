"""Training runs under train.parallel=fsdp that the command line does not reach, through the Python API. Run by
tests/training/test_fsdp.py under torchrun (`python fsdp_worker.py OUT`: each rank writes OUT/result-RANK.json),
and in one process for the comparison (the same functions, world size 1, where parallel changes nothing)."""
import json
import os
import sys

import torch

from alignkit.data.chat import tokenize_conversation
from alignkit.data.pref_examples import build_examples
from alignkit.data.sft import SFTExample
from alignkit.generation.backend import SamplingParams
from alignkit.generation.local import LocalBackend
from alignkit.models.lora import LoraConfig, apply_lora
from alignkit.models.tiny import tiny_model, tiny_tokenizer
from alignkit.training import distributed, fsdp
from alignkit.training.loop import train
from alignkit.training.preference import PairwiseObjective, PrefLossConfig
from alignkit.training.reference import LiveReference
from alignkit.training.sft import SFTObjective
from tests.helpers.dist_sft_worker import gloo_threads
from tests.helpers.training import WORDS, cfg, make_examples


def summary(result, model) -> dict:
    return {"history": [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in result.history],
            "eval": result.eval_history,
            "trainable": float(sum(p.detach().double().sum() for p in model.parameters() if p.requires_grad)),
            "frozen": float(sum(p.detach().double().sum() for p in model.parameters() if not p.requires_grad))}


def pair_examples(tok, n: int):
    items = [([{"role": "user", "content": f"say {i}"}],
              [[{"role": "assistant", "content": " ".join(WORDS[i:i + 3])}],
               [{"role": "assistant", "content": " ".join(WORDS[i + 4:i + 5 + i % 3])}]],
              None, None, "pairs.jsonl", i + 1, "line") for i in range(n)]
    return build_examples(items, tok, max_length=64)[0]


def lora_live_dpo(out: str, batch_size: int) -> dict:
    """DPO of a LoRA policy whose reference is itself with the adapter off (reference=live), with an eval set
    that does not split evenly over two processes."""
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    # The adapter's random start differs between the processes; all train from rank 0's, as one process does.
    torch.manual_seed(distributed.rank_world()[0])
    model = apply_lora(model, LoraConfig(enabled=True, r=4, alpha=8))
    objective = PairwiseObjective(PrefLossConfig(loss="dpo", reference="live"), LiveReference(model))
    examples = pair_examples(tok, 13)
    result = train(model, objective, examples[:8], cfg(out, batch_size=batch_size, parallel="fsdp", lr=1e-2),
                   eval_examples=examples[8:])
    return summary(result, model)


def bf16_sft(out: str, batch_size: int) -> dict:
    """precision=bf16 with accumulation: FSDP's mixed precision where one process keeps master weights."""
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    result = train(model, SFTObjective(), make_examples(tok, 16),
                   cfg(out, batch_size=batch_size, grad_accum=2, precision="bf16", parallel="fsdp"))
    return summary(result, model)


def checkpointed_chunked_sft(out: str, batch_size: int) -> dict:
    """Activation checkpointing and the chunked output layer (run apart from the model's forward) on shards."""
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    result = train(model, SFTObjective(loss_chunk_size=7), make_examples(tok, 8),
                   cfg(out, batch_size=batch_size, activation_checkpointing=True, parallel="fsdp"))
    return summary(result, model)


PROMPTS = [f"say {WORDS[i]} {WORDS[i + 1]}" for i in range(6)]


def sample(model, tok, prompts, max_tokens: int) -> list[list[int]]:
    """Token ids of one seeded sample (temperature 1) per prompt: the same ids for the same weights."""
    params = SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=1, return_tokens=True)
    outs = LocalBackend(model, tok, batch_size=4).chat([[{"role": "user", "content": p}] for p in prompts], params)
    return [list(o[0].token_ids) for o in outs]


class SampledSource:
    """Each step, this rank's prompts completed by the policy as it is now, then learnt as SFT examples:
    a source that generates, with a different number of tokens (so of forwards) on each rank."""

    def __init__(self, tok, prompts, max_tokens: int):
        self.tok, self.prompts, self.max_tokens = tok, prompts, max_tokens
        self.sampled: list[list[list[int]]] = []

    def next_step(self, step: int, model) -> list[dict]:
        completions = sample(model, self.tok, self.prompts, self.max_tokens)
        self.sampled.append(completions)
        examples = []
        for prompt, ids in zip(self.prompts, completions):
            text = self.tok.decode(ids, skip_special_tokens=True).strip() or "ok"
            t = tokenize_conversation(self.tok, [{"role": "user", "content": prompt},
                                                 {"role": "assistant", "content": text}])
            examples.append(SFTExample(t.input_ids, t.labels))
        return [SFTObjective().collate(examples)]

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def steps_per_epoch(self):
        return None

    def epoch(self) -> float:
        return 0.0


def sampling(out: str) -> dict:
    """Training a LoRA policy on its own samples under FSDP: rank r samples PROMPTS[3r:3r+3] for 3 + 4r tokens.
    peft's generate runs the transformers model inside the sharded root: its first forward is not the root's."""
    rank = distributed.rank_world()[0]
    tok = tiny_tokenizer()
    model = apply_lora(tiny_model(tok), LoraConfig(enabled=True, r=4, alpha=8))  # starts as the base model
    source = SampledSource(tok, PROMPTS[3 * rank:3 * rank + 3], 3 + 4 * rank)
    result = train(model, SFTObjective(), source=source, cfg=cfg(out, parallel="fsdp", max_steps=2))
    return {"sampled": source.sampled, "steps": result.steps}


def layer_by_layer_sampling() -> dict:
    """Sampling with a sharded model outside the loop, every forward gathering one block at a time (so the same
    prompts and lengths on every rank), first under inference mode, then a training step on it."""
    tok = tiny_tokenizer()
    sharded = fsdp.shard(tiny_model(tok), mixed_precision=False, reshard_after_forward=True)
    sampled = sample(sharded.module, tok, PROMPTS[:2], 5)
    objective = SFTObjective()
    loss, _ = objective.loss(sharded.module, objective.collate(make_examples(tok, 2)))
    loss.backward()
    return {"sampled": sampled, "loss": float(loss)}


def main(out: str) -> None:
    assert distributed.init_from_env()
    torch.set_num_threads(1)
    rank = distributed.rank_world()[0]
    report = {"lora_live_dpo": lora_live_dpo(f"{out}/dpo", 2), "bf16_sft": bf16_sft(f"{out}/bf16", 2),
              "checkpointed_chunked_sft": checkpointed_chunked_sft(f"{out}/ac", 2),
              "sampling": sampling(f"{out}/sampling"), "layer_by_layer_sampling": layer_by_layer_sampling()}
    before = gloo_threads()
    distributed.teardown()
    # DTensor's caches keep FSDP's device mesh, and the mesh its process group: threads still alive here
    # would run on into interpreter exit and abort the process.
    report["gloo_threads"] = {"before_teardown": before, "after_teardown": gloo_threads()}
    with open(os.path.join(out, f"result-{rank}.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1])
