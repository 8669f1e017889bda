"""`vllm:<model>` behind the commands that generate from a --model spec (generate, eval ifeval, eval refusal),
with --chat-template passed on to vLLM, and one engine shared by a data job that samples and judges with the
same vllm: model. Against the ChatFakeVLLM stand-in: there is no GPU or vLLM here."""
import pytest

from alignkit.cli import main
from alignkit.construction import generator as generator_module
from alignkit.construction.generator import GeneratorConfig, open_generator
from alignkit.generation.backend import SamplingParams
from alignkit.generation.specs import BackendOptions, build_backend
from alignkit.models.loading import load_tokenizer
from alignkit.models.templates import TEMPLATES
from tests.generation import vllm_chat_fake
from tests.helpers.files import read_jsonl, write_jsonl

QUESTIONS = ["say hello", "name a colour please", "count to three, slowly and clearly"]


@pytest.fixture
def chat_vllm(monkeypatch):
    return vllm_chat_fake.install(monkeypatch)


def prompts_file(tmp_path):
    return write_jsonl(tmp_path / "prompts.jsonl",
                       [{"messages": [{"role": "user", "content": q}], "label": i} for i, q in enumerate(QUESTIONS)])


def sampled_texts(engine, conversation, fields, template=None):
    """What the stand-in engine samples for one conversation: the texts its samples decode to."""
    tok = engine.tokenizer()
    text = tok.apply_chat_template(conversation, chat_template=template, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return engine._sampled(ids, fields).outputs


def test_generate_samples_every_prompt_through_the_vllm_engine_and_reports_its_tokens_per_second(
        tmp_path, model_dir, chat_vllm, capsys):
    out = tmp_path / "answers.jsonl"
    assert main(["generate", "--model", f"vllm:{model_dir}", "--prompts", prompts_file(tmp_path), "--out", str(out),
                 "--n", "2", "--temperature", "1", "--seed", "4", "--max-tokens", "5", "--dtype", "bf16"]) == 0
    (engine,) = chat_vllm.engines
    assert engine.options["model"] == model_dir and engine.options["dtype"] == "bfloat16"
    (kind, conversations, fields, template), = engine.calls
    assert kind == "chat" and template is None
    assert sorted(c[-1]["content"] for c in conversations) == sorted(QUESTIONS)
    assert fields["n"] == 2 and fields["seed"] == 4 and fields["max_tokens"] == 5 and fields["temperature"] == 1
    rows = read_jsonl(out)
    assert [row["label"] for row in rows] == [0, 1, 2]
    tokens = 0
    for row in rows:
        samples = sampled_texts(engine, row["messages"], fields)
        assert row["responses"] == [s.text for s in samples] and row["response"] == samples[0].text
        assert row["model"] == f"vllm:{model_dir}"
        tokens += sum(len(s.token_ids) for s in samples)
    printed = capsys.readouterr().out
    assert f"wrote 3 responses to {out}; generated {tokens} tokens in " in printed and " tokens/s" in printed


def test_a_chat_template_given_on_the_command_line_reaches_vllm(tmp_path, model_dir, chat_vllm):
    out = tmp_path / "answers.jsonl"
    assert main(["generate", "--model", f"vllm:{model_dir}", "--chat-template", "llama3", "--prompts",
                 prompts_file(tmp_path), "--out", str(out), "--max-tokens", "4"]) == 0
    (engine,) = chat_vllm.engines
    (_, _, fields, template), = engine.calls
    assert template == TEMPLATES["llama3"]
    for row in read_jsonl(out):
        assert row["response"] == sampled_texts(engine, row["messages"], fields, template)[0].text


def test_a_chat_template_for_a_server_is_one_line_before_anything_is_called(tmp_path, capsys):
    out = tmp_path / "answers.jsonl"
    code = main(["generate", "--model", "openai:m@http://127.0.0.1:9/v1", "--chat-template", "chatml",
                 "--prompts", prompts_file(tmp_path), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--chat-template" in err, err
    assert not out.exists()


def test_eval_ifeval_and_refusal_answer_with_a_vllm_model(tmp_path, model_dir, chat_vllm):
    ifeval = write_jsonl(tmp_path / "ifeval.jsonl", [
        {"key": 1, "prompt": "Write one word in lowercase.", "instruction_id_list": ["change_case:english_lowercase"],
         "kwargs": [{}]}])
    assert main(["eval", "ifeval", "--prompts", ifeval, "--model", f"vllm:{model_dir}", "--max-tokens", "4"]) == 0
    assert main(["eval", "refusal", "--model", f"vllm:{model_dir}", "--limit", "2", "--max-tokens", "4",
                 "--out", str(tmp_path / "refusal")]) == 0
    asked = [c[-1]["content"] for engine in chat_vllm.engines for _, convs, _, _ in engine.calls for c in convs]
    assert asked[0] == "Write one word in lowercase." and len(asked) == 3
    assert len(chat_vllm.engines) == 2  # one per command


def test_a_data_job_sampling_and_judging_with_one_vllm_model_shares_its_engine(tmp_path, model_dir, chat_vllm,
                                                                               monkeypatch):
    monkeypatch.setattr(generator_module, "_VLLM_ENGINES", {})
    sampler = open_generator(GeneratorConfig(model=f"vllm:{model_dir}"), str(tmp_path / "cache.sqlite"))
    judge = open_generator(GeneratorConfig(model=f"vllm:{model_dir}", temperature=0.0),
                           str(tmp_path / "cache.sqlite"))
    other = open_generator(GeneratorConfig(model=f"vllm:{model_dir}", dtype="bf16"), str(tmp_path / "c2.sqlite"))
    assert len(chat_vllm.engines) == 2  # the bf16 one is another engine
    conversation = [[{"role": "user", "content": "hi"}]]
    sampler.chat(conversation, SamplingParams(max_tokens=3, temperature=1.0, seed=1))
    judge.chat(conversation, SamplingParams(max_tokens=3))
    assert len(chat_vllm.engines[0].calls) == 2 and not chat_vllm.engines[1].calls
    for opened in (sampler, judge, other):
        opened.close()


def test_vllm_renders_with_the_model_folders_template_and_a_server_takes_none_from_here(model_dir, chat_vllm):
    """The premise of the comparisons above: the stand-in renders with the folder's own template."""
    backend = build_backend(f"vllm:{model_dir}")
    assert backend.llm.tokenizer().chat_template == load_tokenizer(model_dir).chat_template
    with pytest.raises(ValueError, match="its own chat template"):
        build_backend("openai:m@http://127.0.0.1:9/v1", BackendOptions(chat_template="{{ messages }}"))
