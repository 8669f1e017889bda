from dataclasses import dataclass, field

import pytest
import torch

from alignkit.config import ConfigError, load_config
from alignkit.models.reward import RewardModel
from alignkit.models.tiny import tiny_model
from alignkit.rewards.interface import CombinedReward, Sample
from alignkit.rewards.shaping import RewardShaping, ShapedReward
from alignkit.rewards.spec import RewardSpec, build_reward, reward_names, validate_reward_specs


@dataclass
class RunConfig:
    """How a training command's config holds rewards: a list of specs, checked by its own validate."""

    rewards: list[RewardSpec] = field(default_factory=list)
    reward_shaping: RewardShaping = field(default_factory=RewardShaping)

    def validate(self, where: str = "") -> None:
        validate_reward_specs(self.rewards, "rewards")


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return str(path)


def config_error(specs) -> str:
    with pytest.raises(ConfigError) as caught:
        validate_reward_specs(specs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_specs_from_yaml_with_weights_and_options(tmp_path):
    cfg = load_config(RunConfig, write(tmp_path, """
rewards:
  - {kind: format, weight: 1.0}
  - {kind: regex, pattern: "\\\\d+", mode: fullmatch, weight: 0.5}
  - {kind: exact, name: gold, reference_key: gold, weight: 2}
reward_shaping: {normalize: batch, clip_low: -3, clip_high: 3}
"""))
    assert [(s.kind, s.weight) for s in cfg.rewards] == [("format", 1.0), ("regex", 0.5), ("exact", 2.0)]
    reward = build_reward(cfg.rewards, cfg.reward_shaping)
    assert isinstance(reward, ShapedReward) and isinstance(reward.reward, CombinedReward)
    samples = [Sample([], "42", {"format": "upper", "gold": "42"}),
               Sample([], "ABC", {"format": "upper", "gold": "x"})]
    result = reward.score(samples)
    assert set(result.components) == {"format", "regex", "gold"}
    parts = {name: part.scores for name, part in result.components.items()}
    assert result.unshaped == [1.0 * f + 0.5 * r + 2.0 * g
                               for f, r, g in zip(parts["format"], parts["regex"], parts["gold"])]


def test_unknown_keys_and_wrong_types_name_the_entry(tmp_path):
    with pytest.raises(ConfigError, match=r"rewards\[1\]: unknown key\(s\) \['wieght'\]"):
        load_config(RunConfig, write(tmp_path, "rewards: [{kind: format}, {kind: format, wieght: 1}]"))
    with pytest.raises(ConfigError, match=r"rewards\[0\]\.weight: expected a number"):
        load_config(RunConfig, write(tmp_path, "rewards: [{kind: format, weight: heavy}]"))
    with pytest.raises(ConfigError, match=r"rewards\[1\]\.pattern: must be a regular expression"):
        load_config(RunConfig, write(tmp_path, "rewards: [format, regex]"))


@pytest.mark.parametrize("spec, expected", [
    (RewardSpec(kind="magic"), r"rewards\[0\]\.kind: must be one of rm, ifeval, format"),
    (RewardSpec(kind="format", pattern="x"), r"rewards\[0\]\.pattern: does not apply to kind 'format'"),
    (RewardSpec(kind="format", format="xml"), r"rewards\[0\]\.format: must be one of json, upper, ending"),
    (RewardSpec(kind="ifeval", mode="most"), r"rewards\[0\]\.mode: must be one of fraction, all"),
    (RewardSpec(kind="regex", pattern="(unclosed"), r"rewards\[0\]\.pattern: not a valid regular expression"),
    (RewardSpec(kind="python", function="tests.helpers.no_such_module:fn"),
     r"rewards\[0\]\.function: cannot import module 'tests.helpers.no_such_module'"),
    (RewardSpec(kind="python", function="tests.helpers.reward_functions"),
     r"rewards\[0\]\.function: .*package.module:function"),
    (RewardSpec(kind="judge"), r"rewards\[0\]\.judge: backend spec is empty"),
    (RewardSpec(kind="judge", judge="embedded", mode="pairwise", strategy="vibes"), r"rewards\[0\]\.strategy: "),
    (RewardSpec(kind="judge", judge="embedded", max_tokens=0), r"rewards\[0\]\.max_tokens: must be"),
    (RewardSpec(kind="exact", weight=float("nan")), r"rewards\[0\]\.weight: must be a number"),
    (RewardSpec(kind="rm"), r"rewards\[0\]\.path: must be a reward-model folder"),
])
def test_each_bad_spec_is_a_one_line_error_naming_its_key(spec, expected):
    assert pytest.raises(ConfigError, validate_reward_specs, [spec]).match(expected)
    config_error([spec])


def test_rm_path_must_be_a_reward_model_folder(tmp_path, tiny_tok):
    lm_dir = tmp_path / "lm"
    tiny_model(tiny_tok).save_pretrained(str(lm_dir))
    message = config_error([RewardSpec(kind="format"), RewardSpec(kind="rm", path=str(lm_dir))])
    assert message.startswith("rewards[1].path: must be a reward-model folder")
    rm = RewardModel.from_causal_lm(tiny_model(tiny_tok), tiny_tok)
    torch.nn.init.normal_(rm.hf.score.weight)
    rm.save_pretrained(str(tmp_path / "rm"), tiny_tok)
    validate_reward_specs([RewardSpec(kind="rm", path=str(tmp_path / "rm"))])


def test_names_default_to_the_kind_numbered_and_must_be_distinct():
    specs = [RewardSpec(kind="regex", pattern="a"), RewardSpec(kind="regex", pattern="b"), RewardSpec(kind="format")]
    assert reward_names(specs) == ["regex", "regex_2", "format"]
    validate_reward_specs(specs)
    clash = [RewardSpec(kind="format", name="x"), RewardSpec(kind="exact", name="x")]
    assert config_error(clash).startswith("rewards[1].name: 'x' is already the name of rewards[0]")
    assert config_error([]).startswith("rewards: must list at least one reward")


def test_shaping_validation_names_its_key():
    with pytest.raises(ConfigError, match=r"reward_shaping\.normalize: must be one of none, running, batch"):
        RewardShaping(normalize="always").validate("reward_shaping")
    with pytest.raises(ConfigError, match=r"reward_shaping\.clip_high: must be > clip_low"):
        RewardShaping(clip_low=1.0, clip_high=0.5).validate("reward_shaping")
    with pytest.raises(ConfigError, match=r"reward_shaping\.length_penalty: must be a number >= 0"):
        RewardShaping(length_penalty=-0.1).validate("reward_shaping")
