"""Small SFT data and a quick training config for runs of the training loop."""
from alignkit.data.chat import tokenize_conversation
from alignkit.data.sft import SFTExample
from alignkit.training.config import TrainConfig

WORDS = "the quick brown fox jumps over the lazy dog numbers one two three paris france".split()


def make_examples(tok, n=12):
    out = []
    for i in range(n):
        answer = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(2 + i % 5))  # varied lengths
        t = tokenize_conversation(tok, [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": answer}])
        out.append(SFTExample(t.input_ids, t.labels))
    return out


def cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), lr=1e-3, batch_size=2, grad_accum=1, max_steps=3, warmup_steps=1,
                precision="fp32", progress=False, seed=1)
    base.update(kw)
    return TrainConfig(**base)
