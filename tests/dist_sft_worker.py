"""Run by tests/test_distributed.py under torchrun: a few SFT steps with data parallelism (gloo)."""
import json
import sys

import torch
import torch.distributed as dist

from alignkit.models.tiny import tiny_model, tiny_tokenizer
from alignkit.training.config import TrainConfig
from alignkit.training.loop import train
from alignkit.training.sft import SFTObjective
from tests.test_loop import make_examples


def main(out_dir: str, batch_size: int) -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    cfg = TrainConfig(output_dir=out_dir, lr=1e-3, batch_size=batch_size, max_steps=3, warmup_steps=1,
                      precision="fp32", progress=False, seed=1)
    model = tiny_model(tok)
    result = train(model, SFTObjective(), make_examples(tok, 12), cfg)
    if dist.get_rank() == 0:
        weights = float(sum(p.detach().double().sum() for p in model.parameters()))
        with open(f"{out_dir}/result.json", "w") as f:
            json.dump({"history": result.history, "weights": weights}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
