import re

import pytest
from fastapi.testclient import TestClient

from alignkit.annotation.answers import shown_order
from alignkit.annotation.arena import Arena
from alignkit.annotation.markdown import render_markdown
from alignkit.annotation.web import create_app
from alignkit.generation.backend import Completion
from tests.annotation.helpers import make_store

BASE = "http://127.0.0.1:8600"
PAGES = ["/", "/admin", "/arena", "/arena/1"]
FORMS = ["/answer", "/skip", "/undo", "/logout", "/arena", "/arena/1/vote"]
API_GET = ["/api/next", "/api/progress", "/api/admin"]
API_POST = ["/api/answer", "/api/skip", "/api/undo"]


class Echo:
    """A contestant that answers with its name and the prompt."""

    def __init__(self, name):
        self.model_id = name

    def chat(self, conversations, params):
        return [[Completion(f"{self.model_id} says {c[-1]['content']}")] for c in conversations]


def client_for(store, arena=None) -> TestClient:
    return TestClient(create_app(store, arena), base_url=BASE)


def signed_in(store, token, arena=None) -> TestClient:
    client = client_for(store, arena)
    assert client.post("/login", data={"token": token}, follow_redirects=False).status_code == 303
    return client


def form_fields(html: str) -> dict:
    return dict(re.findall(r'name="(csrf|item|shown|submission|started)" value="([^"]*)"', html))


@pytest.fixture
def app_store(tmp_path):
    store, people, tokens = make_store(tmp_path, k=2)
    arena = Arena({"m1": Echo("m1"), "m2": Echo("m2")})
    return store, people, tokens, arena


def test_nothing_without_a_token(app_store):
    store, _, _, arena = app_store
    client = client_for(store, arena)
    for path in PAGES:
        response = client.get(path)
        assert response.status_code == 401 and 'name="token"' in response.text, path
    for path in FORMS:
        assert client.post(path, data={"csrf": "x"}).status_code in (401, 403), path
    for path in API_GET:
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
    for path in API_POST:
        assert client.post(path, json={}).status_code == 401, path
    assert client.post("/login", data={"token": "wrong"}).status_code == 401
    assert store.votes() == []


def test_a_cookie_does_not_open_the_api(app_store):
    store, _, tokens, _ = app_store
    client = signed_in(store, tokens["bob"])
    assert client.get("/").status_code == 200
    # Only the bearer header opens the JSON API, so a cross-site page cannot post to it with the cookie.
    assert client.post("/api/undo").status_code == 401


def test_forms_need_the_csrf_field_and_the_same_origin(app_store):
    store, _, tokens, _ = app_store
    client = signed_in(store, tokens["alice"])
    fields = form_fields(client.get("/").text)
    good = {**fields, "choice": "left"}
    assert client.post("/answer", data={**good, "csrf": "forged"}).status_code == 403
    assert client.post("/answer", data={k: v for k, v in good.items() if k != "csrf"}).status_code == 403
    assert client.post("/answer", data=good, headers={"Origin": "https://evil.example"}).status_code == 403
    assert client.post("/answer", data=good, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert client.post("/login", data={"token": tokens["alice"]}, headers={"Origin": "https://evil.example"}
                       ).status_code == 403
    assert store.votes() == []
    assert client.post("/answer", data=good, headers={"Origin": BASE}, follow_redirects=False).status_code == 303
    assert len(store.votes()) == 1
    # Another annotator's form field does not work with this annotator's cookie.
    other = form_fields(signed_in(store, tokens["bob"]).get("/").text)
    assert other["csrf"] != fields["csrf"]


def test_every_answer_carries_security_headers(app_store):
    store, _, tokens, _ = app_store
    for response in (client_for(store).get("/"), signed_in(store, tokens["alice"]).get("/")):
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert response.headers["x-frame-options"] == "DENY"


def test_the_sign_in_cookie_is_http_only_and_strict(app_store):
    store, _, tokens, _ = app_store
    response = client_for(store).post("/login", data={"token": tokens["alice"]}, follow_redirects=False)
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie


def test_pages_walk_through_every_kind_and_store_what_was_picked(app_store):
    store, people, tokens, _ = app_store
    client = signed_in(store, tokens["bob"])
    answered = {}
    for _ in range(5):
        html = client.get("/").text
        fields = form_fields(html)
        item = store.item(fields["item"])
        shown = [int(p) for p in fields["shown"].split(",")]
        assert shown == shown_order(store.seed, "bob", item.id, len(item.responses))
        assert "m1" not in html and "m2" not in html  # model names stay hidden
        if item.kind == "pairwise":
            data = {"choice": "right", "reason": "clearer"}
            answered[item.id] = {"choice": str(shown[1] + 1), "reason": "clearer"}
        elif item.kind == "ranking":
            # Ranks per shown position: the last shown is best.
            data = {f"rank_{p}": str(len(shown) - p) for p in range(len(shown))}
            answered[item.id] = {"ranking": list(reversed(shown))}
        else:
            data = {"score_0": "4"}
            answered[item.id] = {"scores": [4]}
        assert client.post("/answer", data={**fields, **data}, follow_redirects=False).status_code == 303
    assert "All done" in client.get("/").text
    assert {v.item_id: v.answer for v in store.votes()} == answered
    assert all(v.seconds is not None and v.seconds >= 0 for v in store.votes())


@pytest.mark.parametrize("data, message", [
    ({"choice": "sideways"}, "choice"),
])
def test_a_bad_form_answer_is_refused_and_nothing_stored(app_store, data, message):
    store, _, tokens, _ = app_store
    client = signed_in(store, tokens["alice"])
    response = client.post("/answer", data={**form_fields(client.get("/").text), **data})
    assert response.status_code == 409 and message in response.text
    assert store.votes() == []


def test_a_ranking_form_must_use_each_rank_once(tmp_path):
    store, _, tokens = make_store(tmp_path, pairwise=0, ranking=1, rating=0)
    client = signed_in(store, tokens["alice"])
    fields = form_fields(client.get("/").text)
    response = client.post("/answer", data={**fields, "rank_0": "1", "rank_1": "1", "rank_2": "2"})
    assert response.status_code == 409 and store.votes() == []


def test_skip_undo_and_double_submit_through_pages(app_store):
    store, _, tokens, _ = app_store
    client = signed_in(store, tokens["alice"])
    fields = form_fields(client.get("/").text)
    first = fields["item"]
    # The same form sent twice (a double click) stores one vote.
    for _ in range(2):
        assert client.post("/answer", data={**fields, "choice": "tie"}, follow_redirects=False).status_code == 303
    assert len(store.votes()) == 1
    second = form_fields(client.get("/").text)
    client.post("/skip", data={"csrf": second["csrf"], "item": second["item"]})
    assert form_fields(client.get("/").text)["item"] not in (first, second["item"])
    client.post("/undo", data={"csrf": second["csrf"]})
    assert form_fields(client.get("/").text)["item"] == first
    assert store.votes() == []


def test_markdown_is_rendered_and_script_is_not():
    html = render_markdown("**bold** <script>alert(1)</script> <img src=x onerror=alert(2)>\n\n"
                           "[go](javascript:alert(3)) [site](https://example.org)\n\n```python\nx = '<b>'\n```")
    assert "<strong>bold</strong>" in html
    assert "<script" not in html and "<img" not in html and 'href="javascript' not in html
    assert "&lt;script&gt;" in html and "onerror=alert(2)" in html  # shown as text
    assert '<a href="https://example.org" rel="noopener noreferrer nofollow">' in html
    assert '<code class="language-python">x = \'&lt;b&gt;\'' in html


def test_payloads_in_responses_reach_the_page_as_text(tmp_path):
    from tests.helpers.files import write_jsonl
    from alignkit.annotation.store import Store
    from alignkit.annotation.tasks import read_tasks

    store = Store(tmp_path / "v.db")
    payload = '<script>alert(1)</script><img src=x onerror="alert(2)"><svg onload=alert(3)>'
    store.load_items(read_tasks(write_jsonl(tmp_path / "t.jsonl", [
        {"prompt": payload, "responses": [payload, "fine"], "question": payload}])))
    client = signed_in(store, store.add_annotator("alice"))
    html = client.get("/").text
    assert "<script>alert" not in html and "<img" not in html and "<svg" not in html
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 3


def test_admin_page_is_for_admins(app_store):
    store, people, tokens, _ = app_store
    from tests.annotation.helpers import answer_as

    answer_as(store, people["bob"], "p0", {"choice": "1"})
    assert signed_in(store, tokens["bob"]).get("/admin").status_code == 403
    page = signed_in(store, tokens["alice"]).get("/admin")
    assert page.status_code == 200 and "0 of 5 items" in page.text
    row = re.search(r"<td>bob</td>\s*<td>(\d+)</td>", page.text)
    assert row and row.group(1) == "1"
    api = client_for(store).get("/api/admin", headers={"Authorization": f"Bearer {tokens['alice']}"}).json()
    assert [p["done"] for p in api["annotators"]] == [0, 1]


def test_api_answers_in_shown_positions(app_store):
    store, _, tokens, _ = app_store
    client = client_for(store)
    auth = {"Authorization": f"Bearer {tokens['bob']}"}
    item = client.get("/api/next", headers=auth).json()["item"]
    body = {"item": item["id"], "submission": "s-1", "answer": {"choice": "left"}, "seconds": 2.5}
    first = client.post("/api/answer", json=body, headers=auth).json()
    assert first["new"] is True
    assert client.post("/api/answer", json=body, headers=auth).json() == {"vote": first["vote"], "new": False}
    vote = store.votes()[0]
    assert vote.answer["choice"] == str(item["shown_order"][0] + 1) and vote.seconds == 2.5
    bad = client.post("/api/answer", json={**body, "submission": "s-2", "answer": {"choice": "x"}}, headers=auth)
    assert bad.status_code == 409
    assert client.post("/api/answer", content=b"not json", headers=auth).status_code == 422
    assert client.post("/api/undo", headers=auth).json() == {"reopened": item["id"]}


def test_arena_hides_names_until_the_vote(app_store):
    store, _, tokens, arena = app_store
    client = signed_in(store, tokens["alice"], arena)
    csrf = form_fields(client.get("/").text)["csrf"]
    response = client.post("/arena", data={"csrf": csrf, "prompt": "what is 2+2?"}, follow_redirects=False)
    assert response.status_code == 303
    page = client.get(response.headers["location"]).text
    battle = store.battles()[0]
    assert battle.model_a != battle.model_b and {battle.model_a, battle.model_b} == {"m1", "m2"}
    # The answers say their model's name (the Echo contestant), so look only at the headings.
    assert 'id="model-a"' not in page and 'id="model-b"' not in page
    submission = re.search(r'name="submission" value="([^"]+)"', page).group(1)
    client.post(f"/arena/{battle.id}/vote", data={"csrf": csrf, "winner": "b", "submission": submission})
    page = client.get(f"/arena/{battle.id}").text
    assert f'id="model-a">{battle.model_a}<' in page and f'id="model-b">{battle.model_b}<' in page
    assert store.battles()[0].winner == "b"
    # Another annotator cannot see or vote on it.
    other = signed_in(store, tokens["bob"], arena)
    assert other.get(f"/arena/{battle.id}").status_code == 404


def test_arena_is_absent_without_contestants(app_store):
    store, _, tokens, _ = app_store
    assert signed_in(store, tokens["alice"]).get("/arena").status_code == 404
