"""The benches' own helpers: self-time accounting, full-length generation, the demo prompts and the bench data."""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from common import format_prompts, run_to_max_tokens, timed  # noqa: E402
from instruction_data import pair_conversations, pref_rows, sft_rows, within_length  # noqa: E402

from alignkit.generation.backend import SamplingParams  # noqa: E402
from alignkit.generation.local import LocalBackend  # noqa: E402
from alignkit.models.tiny import tiny_tokenizer  # noqa: E402
from tests.helpers.generation import CONVERSATIONS, sharp_model  # noqa: E402


class Work:
    def outer(self):
        time.sleep(0.02)
        self.inner()
        self.inner()

    def inner(self):
        time.sleep(0.03)


def test_timed_counts_each_part_once_and_restores_everything():
    work = Work()
    with timed([(Work, "outer", "outer"), (work, "inner", lambda *a: "inner")]) as (seconds, calls):
        work.outer()
    assert calls == {"outer": 1, "inner": 2}
    assert 0.06 <= seconds["inner"] < 0.09 and 0.02 <= seconds["outer"] < 0.04  # outer without inner
    assert "inner" not in work.__dict__ and Work.outer.__name__ == "outer" and not hasattr(Work.outer, "__wrapped__")


def test_run_to_max_tokens_makes_every_row_run_to_the_limit():
    tokenizer = tiny_tokenizer("chatml")
    model = sharp_model(tokenizer)
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():  # EOS far the likeliest token: unforced, every row stops at once
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = 1e4
    model.lm_head = head
    backend = LocalBackend(model, tokenizer)
    params = SamplingParams(max_tokens=7, temperature=1.0, n=2, seed=0)
    assert all(c.finish_reason == "stop" for r in backend.chat(CONVERSATIONS, params) for c in r)
    run_to_max_tokens(model)
    forced = [c for r in backend.chat(CONVERSATIONS, params) for c in r]
    assert {(c.completion_tokens, c.finish_reason) for c in forced} == {(7, "length")}


def test_format_prompts_hold_the_question_and_its_format():
    prompts = format_prompts(5)
    assert len(prompts) == 5
    for p in prompts:
        assert [m["role"] for m in p["messages"]] == ["user"] and p["format"] in ("json", "upper", "ending")


def test_bench_data_is_the_same_on_every_call_and_pairs_differ():
    rows = sft_rows(12)
    assert rows == sft_rows(12) and rows[:5] == sft_rows(5)  # a longer run extends a shorter one's data
    assert all(len(r["messages"][1]["content"]) >= 250 for r in rows)
    pairs = pref_rows(6)
    assert all(p["chosen"] != p["rejected"] and p["prompt"] for p in pairs)
    assert [c[1]["content"] for c in pair_conversations(pairs[0])] == [pairs[0]["chosen"], pairs[0]["rejected"]]
    short = within_length(rows, 200)
    assert 0 < len(short) < len(rows)
