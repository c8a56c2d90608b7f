#!/usr/bin/env bash
# Runs the suite N times in a row (default 10) in one fresh clone of this checkout, with ../shared linked beside
# it: run 1 is CI's own `.ci/run` (install, tests, ruff), the rest `scripts/test.sh`. Logs go to $LOGS.
# Usage: bash scripts/repeat_suite.sh [N]     (about 11 minutes per run on 2 cores)
set -u
runs=${1:-10}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOGS=${LOGS:-$(mktemp -d)}
clone=$(mktemp -d)
git clone -q "$here" "$clone/main"
[ -d "$here/../shared" ] && ln -s "$(cd "$here/../shared" && pwd)" "$clone/shared"
cd "$clone/main"
echo "clone $clone at $(git rev-parse --short HEAD), logs in $LOGS"
failed=0
for i in $(seq 1 "$runs"); do
  start=$(date +%s)
  if [ "$i" = 1 ]; then
    CI=true bash .ci/run > "$LOGS/run$i.log" 2>&1
  else
    CI=true bash scripts/test.sh -p no:cacheprovider > "$LOGS/run$i.log" 2>&1
  fi
  rc=$?
  [ "$rc" = 0 ] || failed=$((failed + 1))
  echo "run $i: exit $rc in $(( $(date +%s) - start )) s, $(grep -E 'passed|failed' "$LOGS/run$i.log" | tail -1)"
done
echo "$((runs - failed)) of $runs runs passed"
[ "$failed" = 0 ]
