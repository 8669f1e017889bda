"""Acceptance test of the annotation app in headless Chromium: two annotators work one task file at once.

Every expectation (exports, shown orders, agreement) is worked out from what the test itself saw on the
pages and clicked, never read back from the store, so a wrong mapping anywhere between page and file shows.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlparse

import pytest

from alignkit.annotation.answers import shown_order
from alignkit.annotation.export import ExportPolicy, export
from alignkit.annotation.store import Store
from alignkit.annotation.tasks import read_tasks
from alignkit.annotation.web import create_app
from alignkit.serving.background import start_in_background

BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"]
LETTERS = "abcdefghij"
ALPHA, BETA, GAMMA = "alpha-7b", "beta-7b", "gamma-7b"
PAYLOAD = ('Run this.\n\n<script>window.__pwned = 1</script>\n\n<img src=x onerror="window.__pwned=2">\n\n'
           "Click [x](javascript:window.__pwned=3) or read [the docs](https://example.com/docs).\n\n"
           '```python\nprint("hello from a fence")\n```\n')
RUBRIC = ["1: wrong", "2: mostly wrong", "3: partly right", "4: right, unclear", "5: right and clear"]


def marker(item_id: str, index: int) -> str:
    """A word unique to one task-file response: finding it on a page tells which response is shown there."""
    return f"marker-{item_id}-r{index}"


def task_records() -> list[dict]:
    def item(item_id, models, kind="pairwise", texts=None, **extra):
        texts = texts or [""] * len(models)
        return {"id": item_id, "kind": kind, "prompt": f"Question {item_id}: how do I sort a list in Python?",
                "responses": [{"content": f"{marker(item_id, i)} {text or 'Use sorted(xs).'}", "model": model}
                              for i, (model, text) in enumerate(zip(models, texts))], **extra}

    # Task-file order is the order each annotator is given the items in.
    return [
        item("p0", [ALPHA, BETA]),
        item("p1", [BETA, ALPHA]),
        item("rank0", [GAMMA, ALPHA, BETA], kind="ranking"),
        item("p2", [ALPHA, BETA], texts=[PAYLOAD, ""]),
        item("p3", [BETA, ALPHA]),
        item("rate0", [BETA, ALPHA], kind="rating", rubric=RUBRIC),
        item("p4", [ALPHA, BETA]),
        item("p5", [BETA, ALPHA]),
    ]


@dataclass
class Step:
    item: str  # the item the page must show before this step
    action: str  # prefer | tie | both_bad | rank | rate | skip | undo
    arg: object = None  # prefer: a model; rank: models best first; rate: {model: score}
    reason: str = ""


# Each plan is in terms of models, i.e. of task-file responses; which side that is differs per annotator.
PLANS = {
    "alice": [
        Step("p0", "prefer", ALPHA),
        Step("p1", "prefer", ALPHA),
        Step("rank0", "undo"),  # takes back p1, which must come back before rank0
        Step("p1", "prefer", BETA, reason="  clearer steps  "),
        Step("rank0", "rank", (BETA, GAMMA, ALPHA)),
        Step("p2", "prefer", ALPHA),
        Step("p3", "tie"),
        Step("rate0", "rate", {ALPHA: 4, BETA: 2}),
        Step("p4", "skip"),
        Step("p5", "prefer", BETA),
    ],
    "bob": [
        Step("p0", "prefer", ALPHA),
        Step("p1", "prefer", BETA),
        Step("rank0", "rank", (BETA, ALPHA, GAMMA)),
        Step("p2", "prefer", BETA),
        Step("p3", "both_bad"),
        Step("rate0", "undo"),
        Step("p3", "prefer", ALPHA),
        Step("rate0", "rate", {ALPHA: 5, BETA: 2}),
        Step("p4", "prefer", ALPHA),
        Step("p5", "skip"),
    ],
}
# Alice works with the mouse, Bob with the keyboard; each does one of ranking and rating the other way.
WAYS = {"alice": {"pairwise": "mouse", "rank": "mouse", "rate": "keys", "other": "mouse"},
        "bob": {"pairwise": "keys", "rank": "keys", "rate": "mouse", "other": "keys"}}
KEYS = {"left": ["a", "1", "ArrowLeft"], "right": ["b", "2", "ArrowRight"], "tie": ["t"], "both_bad": ["x"],
        "skip": ["s"], "undo": ["u"]}


def submit(page, path: str, act) -> None:
    """Runs `act` (a click or key press that posts a form) and waits until the page it leads to has loaded."""
    def is_post(response) -> bool:
        return response.request.method == "POST" and urlparse(response.url).path == path

    with page.expect_response(is_post) as posted, page.expect_navigation(wait_until="load"):
        act()
    response = posted.value
    body = "" if response.status in (301, 302, 303) else response.text()[:300]
    assert response.status == 303, f"POST {path} answered {response.status}: {body}"


def shown_on_page(page, item: dict) -> list[int]:
    """The task-file index of the response at each shown position, read from the page text."""
    count = len(item["responses"])
    assert page.locator(".response").count() == count
    order = []
    for position in range(count):
        text = page.locator(f"#response-{LETTERS[position]} .content").inner_text()
        found = [i for i in range(count) if marker(item["id"], i) in text]
        assert len(found) == 1, (item["id"], position, text)
        order += found
    return order


def progress_text(done: int, skipped: int, items: int) -> str:
    return f"{done} of {items - skipped} done" + (f", {skipped} skipped" if skipped else "")


class Session:
    """One annotator at work in one page; what they clicked goes to `record`, in their order of answering."""

    def __init__(self, name, page, items, record, hooks):
        self.name, self.page, self.items = name, page, items
        self.record, self.hooks = record, hooks
        self.ways = WAYS[name]
        self.presses = Counter()
        self.done = self.skipped = 0

    def press(self, what: str) -> None:
        keys = KEYS[what]
        self.page.keyboard.press(keys[self.presses[what] % len(keys)])  # every bound key gets used
        self.presses[what] += 1

    def check_progress(self) -> None:
        assert self.page.locator("#progress-text").inner_text() == progress_text(self.done, self.skipped,
                                                                               len(self.items))

    def run(self, plan: list[Step]) -> None:
        page = self.page
        seen = set()
        for step in plan:
            self.check_progress()
            item_id = page.locator("article.item").get_attribute("data-item")
            assert item_id == step.item, f"{self.name} expected item {step.item}, the page shows {item_id}"
            item = self.items[item_id]
            page_html = page.content()
            assert not any(model in page_html for model in (ALPHA, BETA, GAMMA)), "a model name reached the page"
            shown = shown_on_page(page, item)
            if item_id not in seen:
                seen.add(item_id)
                if item_id in self.hooks:
                    self.hooks[item_id](page, shown)
            getattr(self, step.action)(step, item, shown)
        self.check_progress()
        assert page.locator("#all-done").is_visible()
        assert page.locator("article.item").count() == 0

    def answered(self, item: dict, shown: list[int], clicked, answer: dict) -> None:
        self.record.append({"annotator": self.name, "item": item["id"], "kind": item["kind"], "shown": shown,
                            "clicked": clicked, "answer": answer, "undone": False})
        self.done += 1

    def choose(self, side: str, item: dict, shown: list[int], reason: str) -> None:
        if reason:
            self.page.fill("#reason", reason)
        if self.ways["pairwise"] == "mouse":
            submit(self.page, "/answer", lambda: self.page.click(f"#choose-{side.replace('_', '-')}"))
        else:
            if reason:
                self.page.locator("#reason").blur()  # keys typed into the text box are text, not shortcuts
            submit(self.page, "/answer", lambda: self.press(side))
        # Stored choices name task-file responses: "1" is responses[0], whichever side it was shown on.
        choice = str(shown[0 if side == "left" else 1] + 1) if side in ("left", "right") else side
        self.answered(item, shown, side, {"choice": choice, "reason": reason.strip()})

    def prefer(self, step, item, shown):
        wanted = next(i for i, r in enumerate(item["responses"]) if r["model"] == step.arg)
        self.choose("left" if shown[0] == wanted else "right", item, shown, step.reason)

    def tie(self, step, item, shown):
        self.choose("tie", item, shown, step.reason)

    def both_bad(self, step, item, shown):
        self.choose("both_bad", item, shown, step.reason)

    def rank(self, step, item, shown):
        models = [item["responses"][index]["model"] for index in shown]  # per shown position
        ranks = {position: step.arg.index(model) + 1 for position, model in enumerate(models)}
        page = self.page
        if self.ways["rank"] == "mouse":
            for position, rank in ranks.items():
                page.select_option(f"#rank-{LETTERS[position]}", str(rank))
            submit(page, "/answer", lambda: page.click("#submit"))
        else:
            for model in step.arg:
                page.keyboard.press(LETTERS[models.index(model)])
            for position, rank in ranks.items():
                assert page.input_value(f"#rank-{LETTERS[position]}") == str(rank)
            submit(page, "/answer", lambda: page.keyboard.press("Enter"))
        best_first = sorted(ranks, key=ranks.get)
        self.answered(item, shown, ranks, {"ranking": [shown[position] for position in best_first]})

    def rate(self, step, item, shown):
        scores = {position: step.arg[item["responses"][index]["model"]] for position, index in enumerate(shown)}
        page = self.page
        if self.ways["rate"] == "mouse":
            for position, score in scores.items():
                page.click(f"#score-{position}-{score}")
            submit(page, "/answer", lambda: page.click("#submit"))
        else:
            for position in range(len(shown)):
                page.keyboard.press(str(scores[position]))
            for position, score in scores.items():
                assert page.is_checked(f"#score-{position}-{score}")
            submit(page, "/answer", lambda: page.keyboard.press("Enter"))
        stored = [0] * len(shown)
        for position, score in scores.items():
            stored[shown[position]] = score
        self.answered(item, shown, scores, {"scores": stored})

    def skip(self, step, item, shown):
        if self.ways["other"] == "mouse":
            submit(self.page, "/skip", lambda: self.page.click("#skip"))
        else:
            submit(self.page, "/skip", lambda: self.press("skip"))
        self.skipped += 1

    def undo(self, step, item, shown):
        if self.ways["other"] == "mouse":
            submit(self.page, "/undo", lambda: self.page.click("#undo"))
        else:
            submit(self.page, "/undo", lambda: self.press("undo"))
        last = [entry for entry in self.record if entry["annotator"] == self.name and not entry["undone"]][-1]
        last["undone"] = True
        self.done -= 1


def sign_in(page, base_url: str, token: str) -> None:
    page.goto(base_url + "/login")
    page.fill("#token", token)
    submit(page, "/login", lambda: page.click("form.login button[type=submit]"))
    assert urlparse(page.url).path == "/"
    # The token cookie is HttpOnly: a script that did slip through could not read it.
    assert page.evaluate("document.cookie") == ""


def check_refusals(browser, context, page, base_url: str, token: str, shown: list[int]) -> None:
    """Requests without a valid token, with a wrong csrf field or from another origin are refused."""
    stranger = browser.new_context()
    try:
        response = stranger.new_page().goto(base_url + "/")
        assert response.status == 401
        assert stranger.pages[0].locator("form.login #token").is_visible()
        assert stranger.pages[0].locator("article.item").count() == 0
        assert stranger.request.get(base_url + "/api/next").status == 401
        assert stranger.request.get(base_url + "/api/next", headers={"Authorization": "Bearer nope"}).status == 401
    finally:
        stranger.close()
    # The cookie alone does not open the API (it takes no csrf field); the bearer token does.
    assert context.request.get(base_url + "/api/next").status == 401
    api = context.request.get(base_url + "/api/next", headers={"Authorization": f"Bearer {token}"})
    assert api.status == 200
    assert api.json()["item"]["id"] == "p0" and api.json()["item"]["shown_order"] == shown

    form = {"item": "p0", "choice": "left", "shown": ",".join(map(str, shown))}
    wrong = context.request.post(base_url + "/answer", form={**form, "csrf": "0" * 64, "submission": "forged-1"},
                                 max_redirects=0)
    assert wrong.status == 403 and "csrf" in wrong.text(), (wrong.status, wrong.text()[:200])
    csrf = page.locator("#answer-form input[name=csrf]").get_attribute("value")
    foreign = context.request.post(base_url + "/answer", form={**form, "csrf": csrf, "submission": "forged-2"},
                                   headers={"Origin": "https://evil.example"}, max_redirects=0)
    assert foreign.status == 403 and "cross-site" in foreign.text(), (foreign.status, foreign.text()[:200])
    # Had either been stored, the real answer to p0 that follows would be refused as a second answer.


def check_payload_page(page, item: dict, shown: list[int], screenshot_path) -> None:
    section = page.locator(f"#response-{LETTERS[shown.index(0)]}")  # the payload is responses[0]
    text = section.locator(".content").inner_text()
    assert "<script>window.__pwned = 1</script>" in text
    assert 'onerror="window.__pwned=2"' in text
    assert "[x](javascript:window.__pwned=3)" in text  # shown as text: not a link
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.locator(".response img").count() == 0 and page.locator("img").count() == 0
    assert page.locator("[onerror]").count() == 0
    assert page.eval_on_selector_all("script", "els => els.map(e => e.getAttribute('src'))") == ["/static/annotate.js"]
    # Real links survive, so "no javascript: link" is not just "no links at all".
    assert page.eval_on_selector_all(".response a", "els => els.map(e => e.getAttribute('href'))") == [
        "https://example.com/docs"]
    assert 'print("hello from a fence")' in section.locator("pre code").inner_text()
    page.screenshot(path=str(screenshot_path), full_page=True)


def annotate(name, token, base_url, items, record, barrier, hooks, errors, failures) -> None:
    """One annotator's whole session, in this thread's own Playwright (its objects are per-thread)."""
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=BROWSER_ARGS)
            try:
                context = browser.new_context()
                context.set_default_timeout(15_000)
                page = context.new_page()
                page.on("console", lambda m: errors.append(f"{name}: {m.type}: {m.text}")
                        if m.type in ("error", "warning") else None)
                page.on("pageerror", lambda e: errors.append(f"{name}: page error: {e}"))
                page.on("dialog", lambda d: (errors.append(f"{name}: dialog: {d.message}"), d.dismiss()))
                sign_in(page, base_url, token)
                session_hooks = {item_id: (lambda p, shown, hook=hook: hook(browser, context, p, shown))
                                 for item_id, hook in hooks.items()}
                Session(name, page, items, record, session_hooks).run(PLANS[name])
            finally:
                browser.close()
    except Exception as error:  # reported by the main thread; the other session must not wait on us
        failures.append((name, error))
        barrier.abort()


def expected_pairs(items: dict, live: list[dict], aggregate: str) -> list[str]:
    """The pairs export predicted from the clicks (export.py's documented rules), as sorted JSON lines."""
    rows = []
    for item_id, item in items.items():
        votes = [entry["answer"] for entry in live if entry["item"] == item_id]
        if not votes:
            continue
        base = {"id": item_id, "prompt": [{"role": "user", "content": item["prompt"]}], "votes": len(votes)}
        texts = [[{"role": "assistant", "content": r["content"]}] for r in item["responses"]]
        if item["kind"] == "pairwise":
            choices = [vote["choice"] for vote in votes]
            if aggregate == "majority":
                common = Counter(choices).most_common()
                choices = [] if len(common) > 1 and common[0][1] == common[1][1] else [common[0][0]]
            for choice in choices:
                if choice in ("1", "2"):  # ties and "both bad" never become pairs
                    better = int(choice) - 1
                    rows.append({**base, "chosen": texts[better], "rejected": texts[1 - better]})
            continue
        count = len(item["responses"])
        if item["kind"] == "ranking":  # Borda points: count-1 for first place ... 0 for last
            per_vote = [[float(count - 1 - vote["ranking"].index(i)) for i in range(count)] for vote in votes]
        else:
            per_vote = [[float(s) for s in vote["scores"]] for vote in votes]
        if aggregate == "majority":
            per_vote = [[sum(column) / len(column) for column in zip(*per_vote)]]
        for scores in per_vote:
            for better in range(count):
                for worse in range(count):
                    if scores[better] > scores[worse]:
                        rows.append({**base, "chosen": texts[better], "rejected": texts[worse],
                                     "margin": scores[better] - scores[worse]})
    return sorted(json.dumps(row, sort_keys=True) for row in rows)


def as_sorted_json(rows: list[dict]) -> list[str]:
    return sorted(json.dumps(row, sort_keys=True) for row in rows)


def expected_agreement(live: list[dict]) -> dict:
    """Cohen's kappa of alice and bob per kind of task, computed from the clicks with scikit-learn."""
    from sklearn.metrics import cohen_kappa_score

    units: dict[str, dict[str, dict[str, object]]] = {"pairwise": {}, "ranking": {}, "rating": {}}
    for entry in live:
        mine = units[entry["kind"]].setdefault(entry["annotator"], {})
        if entry["kind"] == "pairwise":
            mine[entry["item"]] = entry["answer"]["choice"]
        elif entry["kind"] == "ranking":
            for place, index in enumerate(entry["answer"]["ranking"], start=1):
                mine[f"{entry['item']}#{index}"] = place
        else:
            for index, score in enumerate(entry["answer"]["scores"]):
                mine[f"{entry['item']}#{index}"] = score
    figures = {}
    for kind, by_annotator in units.items():
        alice, bob = by_annotator["alice"], by_annotator["bob"]
        shared = sorted(set(alice) & set(bob))
        a, b = [alice[u] for u in shared], [bob[u] for u in shared]
        if kind == "pairwise":
            kappa = cohen_kappa_score(a, b)
        elif kind == "ranking":
            kappa = cohen_kappa_score(a, b, weights="linear")
        else:  # interval: squared distance on the whole integer scale between the lowest and highest score
            seen = [*alice.values(), *bob.values()]
            kappa = cohen_kappa_score(a, b, weights="quadratic", labels=list(range(min(seen), max(seen) + 1)))
        figures[kind] = {"kappa": float(kappa), "shared": len(shared), "alice": len(alice), "bob": len(bob),
                         "labels": len(alice) + len(bob), "agree": sum(x == y for x, y in zip(a, b)) / len(shared)}
    return figures


def start_cli(*args, cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "alignkit", "annotate", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# A real browser catches what the test client cannot: with "Referrer-Policy: no-referrer" Chromium posted
# forms with "Origin: null" (refused as cross-site), and a "data:" icon broke the policy on every page.
def test_two_annotators_at_once_in_headless_chromium(tmp_path):
    if not os.path.exists("/usr/bin/chromium"):
        pytest.skip("/usr/bin/chromium is not installed (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright==1.65.2)")
    records = task_records()
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    items = {r["id"]: r for r in records}
    db = tmp_path / "votes.db"
    store = Store(db, k=2)
    assert store.load_items(read_tasks(str(tasks))) == len(records)
    tokens = {name: store.add_annotator(name) for name in ("alice", "bob")}

    record: list[dict] = []
    errors: list[str] = []
    failures: list[tuple[str, BaseException]] = []
    snapshots: list[dict] = []
    # Both sessions meet twice, each time holding a claim: on their first item and on the payload item.
    barrier = threading.Barrier(2, action=lambda: snapshots.append(store.overview()), timeout=60)
    screenshot = tmp_path / "pairwise.png"
    payload_seen = []

    def meet(*_):
        barrier.wait()

    def alice_first(browser, context, page, shown):
        meet()
        check_refusals(browser, context, page, server.base_url, tokens["alice"], shown)

    def alice_payload(browser, context, page, shown):
        meet()
        check_payload_page(page, items["p2"], shown, screenshot)
        payload_seen.append(shown)

    hooks = {"alice": {"p0": alice_first, "p2": alice_payload}, "bob": {"p0": meet, "p2": meet}}
    server = start_in_background(create_app(store))
    try:
        threads = [threading.Thread(target=annotate, name=f"session-{name}", daemon=True,
                                    args=(name, tokens[name], server.base_url, items, record, barrier, hooks[name],
                                          errors, failures))
                   for name in ("alice", "bob")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=150)
        assert not any(thread.is_alive() for thread in threads), "a browser session did not finish in time"
    finally:
        server.stop()
    if failures:
        name, error = next(((n, e) for n, e in failures if not isinstance(e, threading.BrokenBarrierError)),
                           failures[0])
        raise AssertionError(f"{name}'s browser session failed: {error}") from error

    # Both were at work at the same time: at each meeting each held exactly one open claim.
    assert len(snapshots) == 2
    for snapshot in snapshots:
        assert {p["name"]: p["open"] for p in snapshot["annotators"]} == {"alice": 1, "bob": 1}
    assert errors == []  # no console error, page error or dialog, from a payload or anything else
    assert payload_seen and screenshot.stat().st_size > 0

    live = [entry for entry in record if not entry["undone"]]
    assert Counter(entry["annotator"] for entry in live) == {"alice": 7, "bob": 7}
    assert sum(entry["undone"] for entry in record) == 2

    # Raw votes: every answer given (undone ones marked), each with the order its page showed.
    votes = export(store, "votes").rows
    got = [(v["annotator"], v["item"], v["kind"], v["shown_order"], v["answer"], v["undone_at"] is not None)
           for v in sorted(votes, key=lambda v: v["vote"])]
    want = [(e["annotator"], e["item"], e["kind"], e["shown"], e["answer"], e["undone"]) for e in record]
    for name in ("alice", "bob"):
        assert [g for g in got if g[0] == name] == [w for w in want if w[0] == name]
    for entry in record:  # what the pages showed is the documented per-annotator order
        assert entry["shown"] == shown_order(store.seed, entry["annotator"], entry["item"],
                                             len(items[entry["item"]]["responses"]))
    assert all(v["seconds"] is not None and v["seconds"] >= 0 for v in votes)

    assert as_sorted_json(export(store, "pairs", ExportPolicy(aggregate="each")).rows) == expected_pairs(
        items, live, "each")

    majority_out, agreement_dir = tmp_path / "pairs.jsonl", tmp_path / "agreement"
    # The export runs as its own process, as a person would run it; the agreement command meanwhile runs
    # in this one (the same entry point), which saves a second ~10 s start on a busy machine.
    exporting = start_cli("export", "--db", str(db), "--what", "pairs", "--out", str(majority_out), cwd=tmp_path)
    try:
        from alignkit.cli import main as alignkit_main

        assert alignkit_main(["annotate", "agreement", "--db", str(db), "--out", str(agreement_dir)]) == 0
        _, err = exporting.communicate(timeout=120)
    finally:
        if exporting.poll() is None:
            exporting.kill()
            exporting.wait()
    assert exporting.returncode == 0, err
    majority_rows = [json.loads(line) for line in majority_out.read_text(encoding="utf-8").splitlines()]
    assert as_sorted_json(majority_rows) == expected_pairs(items, live, "majority")

    entries = {e["task"]: e for e in json.loads((agreement_dir / "agreement.json").read_text())["agreement"]}
    assert set(entries) == {"pairwise", "ranking", "rating"}
    for kind, want in expected_agreement(live).items():
        entry = entries[kind]
        assert entry["annotators"] == ["alice", "bob"]
        assert entry["level"] == {"pairwise": "nominal", "ranking": "ordinal", "rating": "interval"}[kind]
        assert entry["cohen_kappa"][0][1] == pytest.approx(want["kappa"], abs=1e-9), kind
        assert entry["cohen_kappa"][1][0] == entry["cohen_kappa"][0][1]
        assert entry["shared_items"] == [[want["alice"], want["shared"]], [want["shared"], want["bob"]]]
        assert entry["n_items"] == want["shared"] and entry["n_labels"] == want["labels"]
        # With two annotators, "the others' majority" is the other one's label.
        assert entry["with_majority"] == {"alice": pytest.approx(want["agree"]), "bob": pytest.approx(want["agree"])}
