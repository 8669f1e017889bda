"""Prompt files for online RL: every prompt keeps its record's fields, which reach the reward function."""
from alignkit.models.tiny import tiny_model, tiny_tokenizer
from alignkit.data.prompts import read_prompt_records
from alignkit.rl.rollout import RolloutConfig, RolloutSource


def test_prompt_files_keep_their_records_fields_for_rewards(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],'
                    ' "answer": "4"}\n{"prompt": "capital of France?", "label": "paris"}\n')
    prompts = read_prompt_records(str(path))
    assert [p.messages[-1]["content"] for p in prompts] == ["2+2?", "capital of France?"]
    assert prompts[0].metadata["answer"] == "4" and prompts[0].metadata["reference"] == "4"
    assert prompts[1].metadata["label"] == "paris" and prompts[1].metadata["source"].endswith(":2")
    seen = []
    tok = tiny_tokenizer("chatml")
    src = RolloutSource(prompts, tok, lambda samples: seen.extend(samples) or [0.0] * len(samples),
                        RolloutConfig(prompts_per_step=2, group_size=1, max_tokens=3, shuffle_prompts=False))
    src.next_step(0, tiny_model(tok))
    assert [(s.prompt[-1]["content"], s.metadata.get("answer", s.metadata.get("label"))) for s in seen] == [
        ("2+2?", "4"), ("capital of France?", "paris")]
    # the reward gets the generated token count (what a length penalty reads), not a re-encoding of the text
    assert [s.num_tokens for s in seen] == [len(b.completion_ids) for b in src.buffer]
