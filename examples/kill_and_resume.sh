#!/usr/bin/env bash
# Resumability on the embedded model: a self-instruct job is killed with SIGKILL part-way, run again, and its
# outputs compared byte for byte with those of a run that was never interrupted (about 2 minutes on 2 cores).
set -uo pipefail
OUT=${OUT:-runs/kill_and_resume}
AK=${ALIGNKIT:-.venv/bin/alignkit}
ARGS=(--config configs/data/self_instruct.yaml target=16 max_rounds=4 prompts_per_round=4
      generator.max_tokens=96 generator.batch_size=4 progress=false if_exists=overwrite)
rm -rf "$OUT"

start=$SECONDS
$AK data self-instruct "${ARGS[@]}" output_dir=$OUT/straight > $OUT.straight.log 2>&1 || { cat $OUT.straight.log; exit 1; }
echo "uninterrupted run: $((SECONDS - start)) s"

$AK data self-instruct "${ARGS[@]}" output_dir=$OUT/killed > /dev/null 2>&1 &
pid=$!
# Kill once the rounds and a few chunks of answers are journaled (header + 6 units).
until [ -f $OUT/killed/journal.jsonl ] && [ "$(wc -l < $OUT/killed/journal.jsonl)" -ge 7 ]; do
  kill -0 $pid 2>/dev/null || { echo "the job ended before it could be killed"; exit 1; }
  sleep 0.2
done
kill -9 $pid
wait $pid 2>/dev/null
echo "killed with $(($(wc -l < $OUT/killed/journal.jsonl) - 1)) units journaled"

start=$SECONDS
ARGS=("${ARGS[@]/if_exists=overwrite/if_exists=resume}")
$AK data self-instruct "${ARGS[@]}" output_dir=$OUT/killed > /dev/null 2>&1 || exit 1
echo "rerun: $((SECONDS - start)) s"
status=0
for f in instructions.jsonl sft.jsonl dropped.jsonl; do
  if cmp -s $OUT/straight/$f $OUT/killed/$f; then echo "$f: identical ($(wc -l < $OUT/straight/$f) rows)"
  else echo "$f: DIFFERS"; status=1; fi
done
exit $status
