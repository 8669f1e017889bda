"""Best-of-n: the chosen response is the highest-reward sample of its prompt (first sampled on a tie), the
reward-against-k curve is the exact expected best of k of the n samples, the KL is best-of-k's analytic one,
failures are counted and never chosen silently, bad config is a one-line error before any model loads, and
a rerun with a cache replays its samples."""
from __future__ import annotations

import itertools
import json
import math
import random

import pytest

from alignkit.cli import main
from alignkit.config import ConfigError, load_config
from alignkit.data.readers import DataSpec
from alignkit.generation.local import LocalBackend
from alignkit.reward_sampling.best_of_n import (BestOfNConfig, best_of_k_kl, best_of_k_weights, choose_best,
                                                expected_best_of_k, report_ks, run_best_of_n)
from alignkit.reward_sampling.candidates import SamplingConfig
from alignkit.rewards.spec import RewardSpec
from tests.helpers.files import write_jsonl
from tests.helpers.paths import CONFIGS

LENGTH = "tests.helpers.rl_rewards:completion_length"
MAYBE_LENGTH = "tests.reward_sampling.test_best_of_n:length_unless_marked"


def length_unless_marked(prompt, completion, metadata):
    """The completion's length in characters; None (cannot score) for every sample of a prompt marked
    `unscorable`, and for the odd-length samples of a prompt marked `odd_fails`."""
    if metadata.get("unscorable") or (metadata.get("odd_fails") and len(completion) % 2):
        return None
    return float(len(completion))


def user(text: str) -> dict:
    return {"messages": [{"role": "user", "content": text}]}


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class CountingBackend:
    """Passes calls to a backend, counting the prompts sent."""

    def __init__(self, backend):
        self.backend, self.model_id, self.prompts = backend, backend.model_id, 0

    def chat(self, conversations, params):
        self.prompts += len(conversations)
        return self.backend.chat(conversations, params)

    def complete(self, prompts, params):
        self.prompts += len(prompts)
        return self.backend.complete(prompts, params)


# ---------------------------------------------------------------- the estimator and the KL (pure)

def brute_force_best_of_k(rewards, k, values):
    """Mean over every k-subset of `values` of the subset's best sample (combinations come in index
    order, so max keeps the first sampled of a tie, as the selection does)."""
    subsets = list(itertools.combinations(range(len(rewards)), k))
    return sum(values[max(s, key=lambda i: rewards[i])] for s in subsets) / len(subsets)


def test_expected_best_of_k_equals_the_mean_over_all_subsets_ties_included():
    rng = random.Random(0)
    for _ in range(60):
        n = rng.randint(1, 7)
        # Few distinct rewards, so ties are common; the values are another quantity of each sample.
        rewards = [float(rng.choice([0, 1, 2, 3])) if rng.random() < 0.7 else rng.gauss(0, 1) for _ in range(n)]
        values = [rng.random() for _ in range(n)]
        for k in range(1, n + 1):
            assert expected_best_of_k(rewards, k) == pytest.approx(brute_force_best_of_k(rewards, k, rewards))
            assert expected_best_of_k(rewards, k, values) == pytest.approx(brute_force_best_of_k(rewards, k, values))
        assert expected_best_of_k(rewards, 1) == pytest.approx(sum(rewards) / n)
        assert expected_best_of_k(rewards, n) == max(rewards)
        assert expected_best_of_k(rewards, n, values) == values[choose_best(rewards)]


def test_best_of_k_weights_are_a_distribution_and_bad_k_is_refused():
    for n in (1, 5, 40):
        for k in (1, n // 2 or 1, n):
            assert sum(best_of_k_weights(n, k)) == pytest.approx(1.0)
    for n, k in ((3, 0), (3, 4)):
        with pytest.raises(ValueError, match="1 <= k <= n"):
            best_of_k_weights(n, k)


def test_ties_go_to_the_first_sampled():
    assert choose_best([1.0, 3.0, 2.0, 3.0]) == 1
    assert choose_best([0.0, 0.0]) == 0


def exact_best_of_k_kl(outcomes: int, k: int) -> float:
    """KL(best-of-k || policy) for a policy uniform over `outcomes` answers with distinct rewards: best-of-k
    gives the i-th worst answer probability (i/M)^k - ((i-1)/M)^k."""
    p = 1 / outcomes
    q = [(i / outcomes) ** k - ((i - 1) / outcomes) ** k for i in range(1, outcomes + 1)]
    return sum(qi * math.log(qi / p) for qi in q if qi > 0)


@pytest.mark.parametrize("k", [1, 2, 4, 16])
def test_the_analytic_kl_is_the_limit_of_the_exact_kl_and_bounds_it(k):
    assert best_of_k_kl(k) == pytest.approx(math.log(k) - (k - 1) / k)
    assert exact_best_of_k_kl(20_000, k) == pytest.approx(best_of_k_kl(k), abs=2e-3)
    assert exact_best_of_k_kl(5, k) <= best_of_k_kl(k) + 1e-12  # few answers: the formula is an upper bound


def test_report_ks_double_up_to_n_and_end_at_n():
    assert report_ks(1) == [1]
    assert report_ks(16) == [1, 2, 4, 8, 16]
    assert report_ks(12) == [1, 2, 4, 8, 12]


# ---------------------------------------------------------------- runs on the tiny model

@pytest.fixture
def backend(tiny_lm, tiny_tok):
    return CountingBackend(LocalBackend(tiny_lm, tiny_tok, batch_size=16))


def config(tmp_path, prompts, rewards, **sampling) -> BestOfNConfig:
    return BestOfNConfig(prompts=[DataSpec(prompts)], rewards=rewards, output_dir=str(tmp_path / "bon"),
                         sampling=SamplingConfig(**{"n": 8, "max_tokens": 6, "seed": 3, **sampling}), progress=False)


def test_the_cli_run_chooses_the_best_sample_and_its_curve_matches_the_samples(tmp_path, model_dir, capsys):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{**user(q), "tag": i} for i, q in
                                                 enumerate(["hello", "What is the capital of France?", "Numbers 0 1"])])
    rewards = f"[{{kind: python, function: '{LENGTH}'}}, {{kind: regex, pattern: e}}]"
    out = tmp_path / "bon"
    assert main(["best-of-n", f"model.name={model_dir}", f"prompts=[{prompts}]", f"rewards={rewards}",
                 "sampling.n=8", "sampling.max_tokens=6", f"output_dir={out}", "progress=false"]) == 0
    printed = capsys.readouterr().out
    samples, best = read_jsonl(out / "samples.jsonl"), read_jsonl(out / "best.jsonl")
    report = json.loads((out / "report.json").read_text())
    assert len(samples) == len(best) == report["prompts"] == report["scored_prompts"] == 3
    assert any(len(set(s["rewards"])) > 1 for s in samples)  # the samples differ, so the choice means something
    for s, b in zip(samples, best):
        assert s["rewards"] == [len(r) + ("e" in r) for r in s["responses"]]  # scored by the configured rewards
        first_best = s["rewards"].index(max(s["rewards"]))
        assert s["best"] == b["sample_index"] == first_best
        assert b["response"] == s["responses"][first_best] and b["reward"] == max(s["rewards"])
        assert b["messages"] == s["messages"] and b["prompt"] == s["messages"][-1]["content"]
        assert b["tag"] == s["tag"] and b["failure"] is None and b["model"] == model_dir
        assert b["reward_components"] == {"python": float(len(b["response"])), "regex": float("e" in b["response"])}

    curve = report["curve"]
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    assert [row["k"] for row in curve] == [1, 2, 4, 8]
    assert [row["kl"] for row in curve] == [best_of_k_kl(k) for k in (1, 2, 4, 8)]
    # k = 1 is the mean sample, k = n the chosen one; in between the reward never falls as k doubles.
    assert curve[0]["reward"] == pytest.approx(mean([mean(s["rewards"]) for s in samples]))
    assert curve[-1]["reward"] == pytest.approx(mean([b["reward"] for b in best]))
    assert all(a["reward"] <= b["reward"] + 1e-9 for a, b in itertools.pairwise(curve))
    regex = [s["reward_components"]["regex"] for s in samples]
    assert curve[0]["components"]["regex"] == pytest.approx(mean([mean(r) for r in regex]))
    assert curve[-1]["components"]["regex"] == pytest.approx(mean([b["reward_components"]["regex"] for b in best]))
    assert curve[2]["components"]["python"] == pytest.approx(mean(
        [expected_best_of_k(s["rewards"], 4, s["reward_components"]["python"]) for s in samples]))
    assert "KL nats" in printed and str(out / "best.jsonl") in printed


def test_failures_keep_the_failure_reward_are_counted_and_an_unscorable_prompt_is_not_chosen(tmp_path, backend,
                                                                                          capsys):
    prompts = write_jsonl(tmp_path / "p.jsonl", [user("hello"), {**user("Numbers 0 1"), "odd_fails": True},
                                                 {**user("world"), "unscorable": True}])
    spec = RewardSpec(kind="python", function=MAYBE_LENGTH, failure_reward=1000.0)
    report = run_best_of_n(config(tmp_path, prompts, [spec]), backend=backend)
    samples, best = read_jsonl(tmp_path / "bon" / "samples.jsonl"), read_jsonl(tmp_path / "bon" / "best.jsonl")

    plain, odd, unscorable = samples
    assert all(f is None for f in plain["failures"])
    odd_failed = [len(r) % 2 == 1 for r in odd["responses"]]
    assert any(odd_failed) and not all(odd_failed)  # the run exercises both kinds of sample
    assert [f is not None for f in odd["failures"]] == odd_failed
    assert odd["rewards"] == [1000.0 if failed else len(r) for r, failed in zip(odd["responses"], odd_failed)]
    assert all(f is not None for f in unscorable["failures"]) and unscorable["best"] is None

    assert report["failed_samples"] == sum(odd_failed) + 8
    assert report["all_failed"] == [f"{prompts}:3"] and report["scored_prompts"] == 2
    # The failure reward is the configured value, so a failed sample can win; it is marked where it did.
    assert report["chosen_failed"] == 1 and best[1]["failure"] is not None and best[1]["reward"] == 1000.0
    assert [b["prompt"] for b in best] == ["hello", "Numbers 0 1"]  # the unscorable prompt has no choice
    printed = capsys.readouterr().out
    assert "could not be scored" in printed and f"{prompts}:3" in printed


def test_a_reward_that_scores_nothing_stops_the_run_after_writing_the_samples(tmp_path, backend):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{**user("hello"), "unscorable": True}])
    cfg = config(tmp_path, prompts, [RewardSpec(kind="python", function=MAYBE_LENGTH)], n=2, max_tokens=2)
    with pytest.raises(ValueError, match="could not score any sample of any prompt .*returned None"):
        run_best_of_n(cfg, backend=backend)
    assert len(read_jsonl(tmp_path / "bon" / "samples.jsonl")) == 1


def test_a_rerun_with_a_cache_replays_the_samples(tmp_path, tiny_lm, tiny_tok):
    prompts = write_jsonl(tmp_path / "p.jsonl", [user("hello"), user("Numbers 0 1")])
    cfg = config(tmp_path, prompts, [RewardSpec(kind="python", function=LENGTH)], cache=str(tmp_path / "c.sqlite"))
    first = CountingBackend(LocalBackend(tiny_lm, tiny_tok))
    run_best_of_n(cfg, backend=first)
    best = (tmp_path / "bon" / "best.jsonl").read_text()
    again = CountingBackend(LocalBackend(tiny_lm, tiny_tok))
    report = run_best_of_n(cfg, backend=again)
    assert first.prompts == 2 and again.prompts == 0
    assert report["cache"] == {"hits": 2, "misses": 0}
    assert (tmp_path / "bon" / "best.jsonl").read_text() == best


# ---------------------------------------------------------------- configuration

@pytest.fixture
def no_model_load(monkeypatch):
    from alignkit.models import loading

    def refuse(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded before the config was checked")

    for name in ("load_model", "load_tokenizer"):
        monkeypatch.setattr(loading, name, refuse)


@pytest.mark.parametrize("override, message", [
    ("prompts=[]", "prompts: must be a list of at least one prompt file"),
    ("rewards=[]", "rewards: must list at least one reward"),
    ("rewards=[{kind: nope}]", "rewards[0].kind: must be one of rm, ifeval"),
    ("sampling.n=0", "sampling.n: must be a whole number >= 1, got 0"),
    ("sampling.temperature=0", "sampling.temperature: must be a positive number, got 0"),
    ("max_prompts=-1", "max_prompts: must be a whole number >= 0, got -1"),
    ("model.lora.enabled=true", "model.lora.enabled: must be false"),
    ("sampling.nn=3", "unknown key(s) ['nn']"),
])
def test_bad_config_is_one_line_naming_the_key_before_any_model_loads(tmp_path, capsys, no_model_load, override,
                                                                     message):
    prompts = write_jsonl(tmp_path / "p.jsonl", [user("hello")])
    args = [f"prompts=[{prompts}]", "rewards=[{kind: format}]", f"output_dir={tmp_path / 'bon'}", override]
    assert main(["best-of-n", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("alignkit best-of-n: error: ") and message in err, err
    assert not (tmp_path / "bon").exists()


def test_a_config_built_in_python_is_checked_by_the_run(tmp_path, no_model_load):
    prompts = write_jsonl(tmp_path / "p.jsonl", [user("hello")])
    with pytest.raises(ConfigError, match=r"^rewards: must list at least one reward"):
        run_best_of_n(config(tmp_path, prompts, []))
    assert not (tmp_path / "bon").exists()


def test_the_shipped_config_loads_and_passes_its_checks():
    cfg = load_config(BestOfNConfig, str(CONFIGS / "best_of_n.yaml"))
    assert cfg.sampling.n == 16 and cfg.sampling.max_tokens == 48
    assert [s.kind for s in cfg.rewards] == ["format"] and cfg.prompts[0].path.endswith("heldout.jsonl")
