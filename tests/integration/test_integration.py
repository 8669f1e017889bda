"""A handful of steps on the embedded SmolLM2-135M-Instruct (converted once into the cache)."""
import json

import pytest
import torch
import yaml

from alignkit.cli import main
from alignkit.data.chat import tokenize_conversation
from alignkit.models.loading import embedded_gguf_path, embedded_model_dir, load_model

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def two_threads():
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(1)


def test_converted_model_matches_the_gguf_and_its_template():
    from alignkit.models.loading import _load_gguf

    cached, tok = load_model("embedded")
    direct, direct_tok = _load_gguf(embedded_gguf_path())
    ids = torch.tensor([tok("The capital of France is").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(cached(ids).logits, direct(ids).logits, rtol=0, atol=0)
    assert tok.chat_template == direct_tok.chat_template
    assert (embedded_model_dir() / "model.safetensors").exists()


def test_embedded_masking_trains_the_end_of_turn_token():
    _, tok = load_model("embedded")
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]
    r = tokenize_conversation(tok, msgs)
    trained = [i for i, l in zip(r.input_ids, r.labels) if l != -100]
    assert tok.decode(trained).startswith("Hello!") and tok.convert_tokens_to_ids("<|im_end|>") in trained
    assert r.input_ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3  # system, user, assistant


def test_lora_sft_then_generate_through_the_cli(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus 1? Answer in capital letters only."},
                          {"role": "assistant", "content": f"{i} PLUS 1 IS {i + 1}."}]} for i in range(8)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"model": {"name": "embedded", "lora": {"enabled": True, "r": 8, "alpha": 16}},
           "data": {"train": [str(data)], "max_length": 128},
           "train": {"output_dir": str(tmp_path / "run"), "max_steps": 3, "batch_size": 4, "lr": 1e-3,
                     "progress": False}}
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["sft", "--config", str(tmp_path / "sft.yaml")]) == 0
    final = tmp_path / "run" / "final"
    assert (final / "model.safetensors").exists() and (final / "adapter" / "adapter_config.json").exists()
    metrics = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3] and all(m["tokens_per_s"] > 0 for m in metrics)

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "What is 3 plus 1?"}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--model", str(final), "--prompts", str(prompts), "--out", str(out),
                 "--max-tokens", "12"]) == 0
    row = json.loads(out.read_text())
    assert row["response"].strip() and row["finish_reason"] in ("stop", "length")


def test_demo_runs_every_stage_end_to_end(tmp_path):
    """The demo's pipeline at minimum size: each stage trains, answers and lands in results and report."""
    from alignkit.demo import DemoConfig, run_demo

    results = run_demo(DemoConfig(out_dir=str(tmp_path), sft_steps=1, dpo_steps=1, grpo_steps=2, grpo_prompts=2,
                                  grpo_group=2, batch_size=2, max_new_tokens=8, heldout_limit=4, judge_pairs=2))
    assert [s for s in ("base", "sft", "dpo", "grpo") if s in results] == ["base", "sft", "dpo", "grpo"]
    assert all(results[s]["n"] == 4 for s in ("base", "sft", "dpo", "grpo"))
    grpo = results["training"]["grpo"]
    assert grpo["steps"] == 2 and 0.0 <= grpo["first_reward"] <= 1.0
    report = json.loads((tmp_path / "evaluation" / "report.json").read_text())
    loss, reward, length, *correlation = report["curves"]
    assert [s["name"] for s in loss["series"]] == ["sft", "dpo", "grpo"]
    assert [s["name"] for s in reward["series"]] == ["grpo"] and reward["series"][0]["x"] == [1, 2]
    # the RL stage's completion length per step, beside its reward (and their correlation where defined)
    logged = [json.loads(line) for line in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [s["name"] for s in length["series"]] == ["grpo"] and length["series"][0]["x"] == [1, 2]
    assert length["series"][0]["y"] == [r["completion_len_mean"] for r in logged if "completion_len_mean" in r]
    for curve in correlation:
        assert all(-1.0 <= r <= 1.0 for r in curve["series"][0]["y"])
    assert [e["model"] for e in report["win_rates"]] == ["sft", "dpo", "grpo"]
    lines = (tmp_path / "responses.jsonl").read_text().splitlines()
    assert len(lines) == 4 and {"base", "sft", "dpo", "grpo"} <= set(json.loads(lines[0]))
    assert (tmp_path / "grpo" / "final" / "config.json").exists() and (tmp_path / "grpo" / "samples.jsonl").exists()
