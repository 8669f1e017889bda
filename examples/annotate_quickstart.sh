#!/usr/bin/env bash
# README.md "Human preferences", end to end on the embedded model: two decoding setups answer the same
# prompts, a task file compares them, the app is served, two annotators vote, and the votes become
# training pairs, a leaderboard, agreement figures and a judge-versus-human meta-evaluation in one report.
# The two annotators are scripts posting to the app's JSON API (people would use the pages instead).
# Run from the repository root: examples/annotate_quickstart.sh  (about 3 minutes on 2 cores)
set -euo pipefail
ALIGNKIT=${ALIGNKIT:-alignkit}
PYTHON=${PYTHON:-python}
OUT=${OUT:-runs/annotate-example}
PORT=${PORT:-8642}
rm -rf "$OUT" && mkdir -p "$OUT"
head -n 12 alignkit/demo/data/heldout.jsonl > "$OUT/prompts.jsonl"

# 1. Two "models": the embedded model greedy, and sampled at temperature 1.
$ALIGNKIT generate --model embedded --name greedy --prompts "$OUT/prompts.jsonl" --out "$OUT/greedy.jsonl" \
    --max-tokens 48
$ALIGNKIT generate --model embedded --name sampled --temperature 1.0 --seed 1 --prompts "$OUT/prompts.jsonl" \
    --out "$OUT/sampled.jsonl" --max-tokens 48

# 2. A task file comparing them, two annotators, and the app (k=2: both answer every item).
$ALIGNKIT annotate tasks --outputs "$OUT/greedy.jsonl" "$OUT/sampled.jsonl" --out "$OUT/tasks.jsonl"
$ALIGNKIT annotate add-annotator alice --db "$OUT/votes.db" --admin | tail -n 1 > "$OUT/alice.token"
$ALIGNKIT annotate add-annotator bob --db "$OUT/votes.db" | tail -n 1 > "$OUT/bob.token"
$ALIGNKIT annotate serve --tasks "$OUT/tasks.jsonl" --db "$OUT/votes.db" --k 2 --port "$PORT" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT

# 3. The annotators know each prompt's right answer (its `answer` field) and prefer the response that
#    gives it; when both or neither do, alice picks the shorter one and bob calls it a tie.
"$PYTHON" - "$OUT" "$PORT" <<'EOF'
import json, sys, time, uuid
import httpx

out, port = sys.argv[1], sys.argv[2]
base = f"http://127.0.0.1:{port}"
deadline = time.monotonic() + 60
while True:
    try:
        httpx.get(base + "/login", timeout=2)
        break
    except httpx.TransportError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)

answers = {}
for line in open(f"{out}/prompts.jsonl"):
    record = json.loads(line)
    answers[record["messages"][0]["content"]] = record["answer"].lower()

for name in ("alice", "bob"):
    token = open(f"{out}/{name}.token").read().strip()
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    while (item := client.get("/api/next").json()["item"]) is not None:
        left, right = item["responses"]
        expected = answers[item["prompt"][-1]["content"]]
        if (expected in left.lower()) != (expected in right.lower()):
            choice = "left" if expected in left.lower() else "right"
        elif name == "alice":
            choice = "left" if len(left) <= len(right) else "right"
        else:
            choice = "tie"
        answer = {"item": item["id"], "submission": str(uuid.uuid4()), "answer": {"choice": choice}}
        client.post("/api/answer", json=answer).raise_for_status()
    print(name, client.get("/api/progress").json())
EOF
kill $SERVER; wait $SERVER 2>/dev/null || true

# 4. Everything the votes feed.
$ALIGNKIT annotate export --db "$OUT/votes.db" --what pairs --out "$OUT/pairs.jsonl"
$ALIGNKIT annotate export --db "$OUT/votes.db" --what votes --out "$OUT/votes.jsonl"
$ALIGNKIT annotate export --db "$OUT/votes.db" --what battles --aggregate each --out "$OUT/battles.jsonl"
$ALIGNKIT leaderboard --battles "$OUT/battles.jsonl" --out "$OUT/leaderboard" --bootstrap 100
$ALIGNKIT annotate agreement --db "$OUT/votes.db" --out "$OUT/agreement"
$ALIGNKIT annotate export --db "$OUT/votes.db" --what gold --out "$OUT/gold.json"
$ALIGNKIT meta-eval --pairs "$OUT/gold.json" --judge embedded --strategies plain --use-logprobs \
    --out "$OUT/judge-vs-human"
$ALIGNKIT report --results "$OUT/agreement/report.json" "$OUT/leaderboard/results.json" \
    "$OUT/judge-vs-human/results.json" --out "$OUT/report" --title "Human preferences: greedy vs sampled"
