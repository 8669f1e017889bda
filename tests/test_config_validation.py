"""Config values are checked before anything loads: a bad value, a config path that is not a readable
YAML file, a model without a chat template or a model name that names nothing is a one-line error
(exit code 2) naming the key, file or option, and no model is loaded."""
import json

import pytest

from alignkit.cli import main
from alignkit.config import ConfigError
from alignkit.models.lora import save_model
from alignkit.models.templates import TEMPLATES
from alignkit.models.tiny import tiny_model, tiny_tokenizer

CONVERSATION = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}
PAIR = {"prompt": "Say hi", "chosen": "hi", "rejected": "go away"}


@pytest.fixture
def no_model_load(monkeypatch):
    """Any model or tokenizer load fails the test: validation must come first."""
    import alignkit.models.loading as loading
    import alignkit.models.reward as reward

    def refuse(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded before the config was validated")

    for module, name in ((loading, "load_model"), (loading, "load_tokenizer"), (reward, "load_reward_model")):
        monkeypatch.setattr(module, name, refuse)


def one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"alignkit {command}: error: ")
    return err


def base_args(tmp_path, command: str) -> list[str]:
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(CONVERSATION if command == "sft" else PAIR) + "\n")
    return [f"data.train=[{data}]", f"train.output_dir={tmp_path / 'run'}", "train.progress=false"]


@pytest.mark.parametrize("command", ["sft", "pref", "dpo", "rm"])
def test_a_config_path_that_is_not_a_readable_yaml_file_is_one_line(tmp_path, capsys, monkeypatch, command):
    folder = tmp_path / "configs"
    folder.mkdir()
    assert main([command, "--config", str(folder)]) == 2
    assert f"{folder}: is a folder" in one_error_line(capsys, command)

    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(b"train:\n  lr: \xff\xfe\x80\x00\x81")
    assert main([command, "--config", str(garbage)]) == 2
    assert f"{garbage}: not a text file" in one_error_line(capsys, command)

    # Root reads any file whatever its mode, so an unreadable one is simulated.
    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    locked = tmp_path / "locked.yaml"
    locked.write_text("train: {lr: 1.0e-5}\n")
    monkeypatch.setattr("alignkit.config.yaml.safe_load", unreadable)
    assert main([command, "--config", str(locked)]) == 2
    assert f"{locked}: cannot read the config file: Permission denied" in one_error_line(capsys, command)


@pytest.mark.parametrize("command, override, message", [
    ("sft", "train.lr=-1", "train.lr: must be a positive number, got -1"),
    ("sft", "train.lr=.nan", "train.lr: must be a positive number, got nan"),
    ("sft", "train.batch_size=0", "train.batch_size: must be a whole number >= 1, got 0"),
    ("sft", "train.grad_accum=0", "train.grad_accum: must be a whole number >= 1, got 0"),
    ("sft", "train.epochs=0", "train.epochs: must be a positive number, got 0"),
    ("sft", "train.max_steps=-3", "train.max_steps: must be a whole number >= 0, got -3"),
    ("sft", "train.warmup_ratio=1.5", "train.warmup_ratio: must be a number in [0, 1], got 1.5"),
    ("sft", "train.min_lr_ratio=-0.1", "train.min_lr_ratio: must be a number in [0, 1], got -0.1"),
    ("sft", "train.schedule=cosin", "train.schedule: must be one of cosine, linear, constant, got 'cosin'"),
    ("sft", "train.precision=fp16", "train.precision: must be one of auto, bf16, fp32, got 'fp16'"),
    ("sft", "train.adam_betas=[0.9,1.0]", "train.adam_betas[1]: must be a number in [0, 1), got 1"),
    ("sft", "train.adam_betas=[0.9]", "train.adam_betas: must be two numbers, got [0.9]"),
    ("sft", "train.adam_eps=0", "train.adam_eps: must be a positive number, got 0"),
    ("sft", "train.weight_decay=-0.01", "train.weight_decay: must be a number >= 0, got -0.01"),
    ("sft", "train.max_grad_norm=-1", "train.max_grad_norm: must be a number >= 0, got -1"),
    ("sft", "train.log_every=0", "train.log_every: must be a whole number >= 1, got 0"),
    ("sft", "train.eval_every=-1", "train.eval_every: must be a whole number >= 0, got -1"),
    ("sft", "train.save_every=-1", "train.save_every: must be a whole number >= 0, got -1"),
    ("sft", "train.save_total_limit=-1", "train.save_total_limit: must be a whole number >= 0, got -1"),
    ("sft", "train.threads=-2", "train.threads: must be a whole number >= 0, got -2"),
    ("sft", "train.seed=-1", "train.seed: must be a whole number in [0, 4294967295], got -1"),
    ("sft", "train.resume=no/such/checkpoint", "train.resume: must be auto, none or an existing checkpoint folder"),
    ("sft", "train.report_to=[tensorbord]", "train.report_to[0]: must be one of tensorboard, wandb, mlflow"),
    ("sft", "model.dtype=fp16", "model.dtype: must be one of fp32, float32, bf16, bfloat16, got 'fp16'"),
    ("sft", "model.lora.r=0", "model.lora.r: must be a whole number >= 1, got 0"),
    ("sft", "model.lora.alpha=0", "model.lora.alpha: must be a positive number, got 0"),
    ("sft", "model.lora.dropout=1", "model.lora.dropout: must be a number in [0, 1), got 1"),
    ("sft", "model.chat_template=chatmll", "model.chat_template: must be a template file or one of chatml"),
    ("sft", "data.max_length=0", "data.max_length: must be a whole number >= 16, got 0"),
    ("sft", "data.overlong=cut", "data.overlong: must be one of truncate, drop, got 'cut'"),
    ("sft", "data.train_on=assistant", "data.train_on: must be one of all_assistant, last_assistant"),
    ("sft", "data.eval_fraction=1", "data.eval_fraction: must be a number in [0, 1), got 1"),
    ("sft", "data.mix_total=-5", "data.mix_total: must be a whole number >= 0, got -5"),
    ("pref", "beta=0", "beta: must be a positive number, got 0"),
    ("pref", "orpo_weight=-1", "orpo_weight: must be a number >= 0, got -1"),
    ("pref", "data.max_length=8", "data.max_length: must be a whole number >= 16, got 8"),
    ("pref", "data.pair_threshold=0.5", "data.pair_threshold: must be 0 unless pair_rule is margin"),
    ("pref", "train.batch_size=0", "train.batch_size: must be a whole number >= 1, got 0"),
    ("dpo", "train.lr=-1", "train.lr: must be a positive number, got -1"),
    ("kto", "kto_desirable_weight=-1", "kto_desirable_weight: must be a number >= 0, got -1"),
    ("simpo", "simpo_gamma=.inf", "simpo_gamma: must be a number >= 0, got inf"),
    ("rm", "train.grad_accum=0", "train.grad_accum: must be a whole number >= 1, got 0"),
    ("rm", "data.overlong=cut", "data.overlong: must be one of truncate, drop, got 'cut'"),
    ("rm", "model.dtype=int8", "model.dtype: must be one of fp32, float32, bf16, bfloat16, got 'int8'"),
])
def test_every_bad_value_is_named_before_anything_loads(tmp_path, capsys, no_model_load, command, override, message):
    assert main([command, *base_args(tmp_path, command), override]) == 2
    assert message in one_error_line(capsys, command)
    assert not (tmp_path / "run").exists()  # nothing was started either


def test_demo_options_are_checked_before_the_model_loads(tmp_path, capsys, no_model_load):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--sft-steps", "-1"]) == 2
    assert "sft_steps: must be a whole number >= 1, got -1" in one_error_line(capsys, "demo")


def test_configs_built_in_python_are_validated_by_the_run_functions(tmp_path, no_model_load):
    from alignkit.data.readers import DataSpec
    from alignkit.training.config import TrainConfig
    from alignkit.training.pref_run import PrefConfig, PrefDataConfig, run_pref
    from alignkit.training.reward import RMConfig, run_rm
    from alignkit.training.sft import SFTConfig, SFTDataConfig, run_sft

    train = TrainConfig(output_dir=str(tmp_path / "run"), grad_accum=0)
    data = [DataSpec(str(tmp_path / "data.jsonl"))]
    for run, cfg in ((run_sft, SFTConfig(data=SFTDataConfig(train=data), train=train)),
                     (run_pref, PrefConfig(data=PrefDataConfig(train=data), train=train)),
                     (run_rm, RMConfig(data=PrefDataConfig(train=data), train=train))):
        with pytest.raises(ConfigError, match=r"^train\.grad_accum: must be a whole number >= 1, got 0$"):
            run(cfg)
    assert not (tmp_path / "run").exists()


# ---- chat templates ----

@pytest.fixture(scope="module")
def base_model_dir(tmp_path_factory):
    """A tiny model whose tokenizer has no chat template, like a base (not instruction-tuned) model."""
    path = tmp_path_factory.mktemp("base") / "tiny-base"
    tok = tiny_tokenizer("inst")
    tok.chat_template = None
    save_model(tiny_model(tok), tok, str(path))
    return str(path)


def sft_args(tmp_path, model_dir: str) -> list[str]:
    return [f"model.name={model_dir}", "train.max_steps=2", "train.batch_size=2", "train.precision=fp32",
            "data.max_length=64", *base_args(tmp_path, "sft")]


def test_a_model_without_a_chat_template_is_named_before_the_model_loads(tmp_path, capsys, monkeypatch,
                                                                         base_model_dir):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the missing template was reported")

    monkeypatch.setattr("alignkit.models.loading.load_model", refuse)
    assert main(["sft", *sft_args(tmp_path, base_model_dir)]) == 2
    err = one_error_line(capsys, "sft")
    assert f"model {base_model_dir} has no chat template; set model.chat_template" in err
    assert ", ".join(TEMPLATES) in err


def test_model_chat_template_lets_a_base_model_train_and_is_saved_with_it(tmp_path, capsys, base_model_dir):
    from alignkit.models.loading import load_tokenizer

    assert main(["sft", *sft_args(tmp_path, base_model_dir), "model.chat_template=chatml"]) == 0
    assert load_tokenizer(str(tmp_path / "run" / "final")).chat_template == TEMPLATES["chatml"]


def test_generate_takes_a_chat_template_for_a_base_model(tmp_path, capsys, base_model_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi"}) + "\n")
    out = tmp_path / "out.jsonl"
    args = ["generate", "--model", base_model_dir, "--prompts", str(prompts), "--out", str(out), "--max-tokens", "3"]
    assert main([*args, "--chat-template", "no-such-template"]) == 2
    assert "--chat-template: cannot read template file 'no-such-template'" in one_error_line(capsys, "generate")
    assert main(args) == 2
    assert "has no chat template; set --chat-template" in one_error_line(capsys, "generate")
    assert main([*args, "--chat-template", "chatml"]) == 0
    assert len(out.read_text().splitlines()) == 1


def test_model_chat_template_reads_a_template_file(tmp_path):
    from alignkit.models.loading import use_chat_template

    path = tmp_path / "template.jinja"
    path.write_text(TEMPLATES["inst"])
    tok = tiny_tokenizer("chatml")
    assert use_chat_template(tok, str(path), "m").chat_template == TEMPLATES["inst"]
    assert use_chat_template(tok, "llama3", "m").chat_template == TEMPLATES["llama3"]


# ---- model names that name nothing ----

def test_a_name_that_is_no_folder_and_not_in_the_hub_cache_says_what_was_tried(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "final").mkdir(parents=True)
    for name, hint in (("smollm", ""), ("runs/fnal", "; did you mean runs/final?")):
        assert main(["sft", *base_args(tmp_path, "sft"), f"model.name={name}"]) == 2
        err = one_error_line(capsys, "sft")
        assert err.endswith(f"model '{name}': not 'embedded', no folder ./{name}, no .gguf file, "
                            f"not a hub id in the local cache (offline mode){hint}"), err


def test_a_failed_hub_lookup_gives_its_reason_in_one_line(monkeypatch):
    from alignkit.models.loading import _hub_miss

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    error = _hub_miss("acme/no-such-model", OSError("acme/no-such-model is not a valid model identifier\nmore"))
    assert str(error) == ("model 'acme/no-such-model': not 'embedded', no folder ./acme/no-such-model, "
                          "no .gguf file, hub lookup failed: acme/no-such-model is not a valid model identifier")
