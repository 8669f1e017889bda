import json
import re
import subprocess
import sys

import pytest

from alignkit.annotation.agreement import agreement
from alignkit.annotation.agreement_report import agreement_results
from alignkit.annotation.export import ExportPolicy, export, majority
from alignkit.data.errors import DataError
from alignkit.data.preference import load_pairs
from alignkit.evaluation.leaderboard import bradley_terry, load_battles
from alignkit.evaluation.meta_eval import evaluate_judge, load_llmbar
from alignkit.generation.backend import Completion
from tests.annotation.helpers import answer_as, make_store
from tests.helpers.files import read_jsonl, write_jsonl

PEOPLE = ("alice", "bob", "carol")


def first(item_id):
    return f"answer {item_id[1:]}, the first"


def second(item_id):
    return f"answer {item_id[1:]}, the second"


@pytest.fixture
def voted(tmp_path):
    """Three annotators on 5 pairwise items, one ranking item and one rating item, each with known answers."""
    store, people, _ = make_store(tmp_path, k=3, names=PEOPLE, pairwise=5, ranking=1, rating=1)
    choices = {  # item: (alice, bob, carol)
        "p0": ("1", "1", "2"),  # majority 1
        "p1": ("2", "2", "2"),  # majority 2
        "p2": ("tie", "tie", "1"),  # majority tie
        "p3": ("both_bad", "both_bad", "2"),  # majority both bad
        "p4": ("1", "2", "tie"),  # no majority
    }
    for item_id, answers in choices.items():
        for name, choice in zip(PEOPLE, answers):
            answer_as(store, people[name], item_id, {"choice": choice})
    rankings = {"alice": [0, 1, 2], "bob": [0, 2, 1], "carol": [1, 0, 2]}
    for name, ranking in rankings.items():
        answer_as(store, people[name], "r0", {"ranking": ranking})
    for name, score in zip(PEOPLE, (4, 5, 2)):
        answer_as(store, people[name], "t0", {"scores": [score]})
    return store, people, choices, rankings


def texts(rows):
    return [(r["id"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows]


def test_majority():
    assert majority(["a", "b", "a"]) == "a"
    assert majority(["a", "b"]) is None
    assert majority([]) is None


def test_majority_pairs_drop_ties_both_bad_and_split_votes(voted):
    store, *_ = voted
    result = export(store, "pairs")
    pairwise = [r for r in result.rows if r["id"].startswith("p")]
    assert texts(pairwise) == [("p0", first("p0"), second("p0")), ("p1", second("p1"), first("p1"))]
    assert result.counts["tie, dropped"] == 1 and result.counts["both bad, dropped"] == 1
    assert result.counts["no majority"] == 1
    # The ranking item: mean Borda points of responses 0, 1, 2 are (2+2+1)/3, (1+0+2)/3, (0+1+0)/3.
    ranking = [r for r in result.rows if r["id"] == "r0"]
    assert [(r["chosen"][0]["content"][-1], r["rejected"][0]["content"][-1], round(r["margin"], 6))
            for r in ranking] == [("0", "1", round(2 / 3, 6)), ("0", "2", round(4 / 3, 6)), ("1", "2", round(2 / 3, 6))]
    assert all(r["prompt"][-1] == {"role": "user", "content": "rank 0"} for r in ranking)


def test_every_vote_pairs_and_policies(voted):
    store, _, choices, _ = voted
    each = export(store, "pairs", ExportPolicy(aggregate="each"))
    pairwise = [r for r in each.rows if r["id"].startswith("p")]
    expected = []
    for item_id, answers in choices.items():
        for choice in answers:
            if choice == "1":
                expected.append((item_id, first(item_id), second(item_id)))
            elif choice == "2":
                expected.append((item_id, second(item_id), first(item_id)))
    assert texts(pairwise) == expected
    assert each.counts["tie, dropped"] == 3 and each.counts["both bad, dropped"] == 2
    with pytest.raises(DataError, match="p2.*tie"):
        export(store, "pairs", ExportPolicy(ties="error"))
    with pytest.raises(DataError, match="p3.*both bad"):
        export(store, "pairs", ExportPolicy(both_bad="error"))
    as_tie = export(store, "pairs", ExportPolicy(both_bad="tie"))
    assert as_tie.counts["tie, dropped"] == 2 and as_tie.counts["both bad, dropped"] == 0
    with pytest.raises(DataError, match="aggregate"):
        ExportPolicy(aggregate="mean")


def test_pairs_file_is_read_by_the_preference_loader(voted, tmp_path):
    store, *_ = voted
    path = write_jsonl(tmp_path / "pairs.jsonl", export(store, "pairs").rows)
    pairs, _ = load_pairs([path])
    assert [p.chosen[-1]["content"] for p in pairs][:2] == [first("p0"), second("p1")]


def test_rankings_export_feeds_any_pair_rule(voted, tmp_path):
    store, *_ = voted
    rows = export(store, "rankings").rows
    assert [(r["id"], r["kind"]) for r in rows] == [("r0", "ranking"), ("t0", "rating")]
    assert rows[0]["rewards"] == pytest.approx([5 / 3, 1.0, 1 / 3])
    assert rows[1]["rewards"] == pytest.approx([11 / 3])
    path = write_jsonl(tmp_path / "rankings.jsonl", rows[:1])
    best, _ = load_pairs([path], rule="best_vs_worst")
    assert [(p.chosen[-1]["content"], p.rejected[-1]["content"]) for p in best] == [
        ("rank 0 response 0", "rank 0 response 2")]
    assert len(export(store, "rankings", ExportPolicy(aggregate="each")).rows) == 6


def test_battles_feed_the_leaderboard(voted, tmp_path):
    store, people, _, _ = voted
    battle = store.add_battle(people["alice"], "q", "m3", "m1", "x", "y")
    store.vote_battle(people["alice"], battle, "a", "v1")
    store.add_battle(people["bob"], "q", "m1", "m2", "x", "y")  # never voted: left out
    result = export(store, "battles")
    pairwise = [(r["model_a"], r["model_b"], r["winner"]) for r in result.rows if r.get("item", "").startswith("p")]
    # p2's majority is a tie; p3's is both bad (dropped by default); p4 has none.
    assert pairwise == [("m1", "m2", "a"), ("m1", "m2", "b"), ("m1", "m2", "tie")]
    ranking = [(r["model_a"], r["model_b"], r["winner"]) for r in result.rows if r.get("item") == "r0"]
    assert ranking == [("m1", "m2", "a"), ("m1", "m3", "a"), ("m2", "m3", "a")]
    assert [r for r in result.rows if r["source"] == "arena"] == [
        {"model_a": "m3", "model_b": "m1", "winner": "a", "battle": battle, "source": "arena"}]
    assert result.counts["arena battles without a vote"] == 1
    both_as_tie = export(store, "battles", ExportPolicy(both_bad="tie"))
    assert len(both_as_tie.rows) == len(result.rows) + 1
    path = write_jsonl(tmp_path / "battles.jsonl", result.rows)
    board = bradley_terry(load_battles(path), n_bootstrap=10)
    assert set(board.models) == {"m1", "m2", "m3"}


def test_raw_votes_keep_everything(voted):
    store, people, _, _ = voted
    store.undo(people["carol"])  # carol's last answer: t0
    rows = export(store, "votes").rows
    assert len(rows) == 5 * 3 + 3 + 3
    undone = [r for r in rows if r["undone_at"]]
    assert [(r["item"], r["annotator"], r["answer"]) for r in undone] == [("t0", "carol", {"scores": [2]})]
    for row in rows:
        assert row["shown_order"] == store.votes(include_undone=True)[row["vote"] - 1].shown_order
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row["time"])
    assert export(store, "rankings").rows[1]["rewards"] == pytest.approx([4.5])


def test_gold_pairs_measure_a_judge_against_people(voted, tmp_path):
    store, *_ = voted
    gold = export(store, "gold").rows
    assert [(r["id"], r["label"]) for r in gold] == [("p0", 1), ("p1", 2)]
    path = tmp_path / "gold.json"
    path.write_text(json.dumps(gold))
    pairs = load_llmbar(path)

    class AlwaysFirst:
        model_id = "first"

        def chat(self, conversations, params):
            return [[Completion("Verdict: A")] for _ in conversations]

    report = evaluate_judge(AlwaysFirst(), pairs)
    # Always "A": right on p0 in order ab, right on p1 in order ba.
    assert report.results["plain"].accuracy == {"ab": 0.5, "ba": 0.5}


def test_agreement_uses_the_units_people_judged(voted):
    store, _, choices, rankings = voted
    entries = {e["task"]: e for e in agreement_results(store)["agreement"]}
    expected = agreement([(item, name, c) for item, answers in choices.items()
                          for name, c in zip(PEOPLE, answers)], "nominal").to_dict()
    assert {k: v for k, v in entries["pairwise"].items() if k != "task"} == expected
    places = [(f"r0#{index}", name, place) for name, ranking in rankings.items()
              for place, index in enumerate(ranking, start=1)]
    assert entries["ranking"]["krippendorff_alpha"] == agreement(places, "ordinal").krippendorff_alpha
    assert entries["rating"]["level"] == "interval"


def test_cli_exports_and_agreement_report(voted, tmp_path):
    store, *_ = voted
    cli = [sys.executable, "-m", "alignkit", "annotate"]
    out = tmp_path / "pairs.jsonl"
    run = subprocess.run(cli + ["export", "--db", store.path, "--what", "pairs", "--out", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert texts(read_jsonl(out)) == texts(export(store, "pairs").rows)
    run = subprocess.run(cli + ["export", "--db", store.path, "--what", "pairs", "--ties", "error", "--out",
                                str(tmp_path / "x.jsonl")], capture_output=True, text=True)
    assert run.returncode == 2 and "p2" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "x.jsonl").exists()
    run = subprocess.run(cli + ["agreement", "--db", store.path, "--out", str(tmp_path / "agr")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    saved = json.loads((tmp_path / "agr" / "agreement.json").read_text())
    assert saved == json.loads(json.dumps(agreement_results(store)))
    assert "Cohen" in (tmp_path / "agr" / "report.html").read_text()
