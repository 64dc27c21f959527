#!/usr/bin/env bash
# Runs the whole test suite and closes with the line "N passed, N failed[, N skipped]".
# Keeps deno's exit code.
set -uo pipefail
cd "$(dirname "$0")/.."
DENO=.tools/node_modules/.bin/deno
log=$(mktemp)
"$DENO" test -A --parallel "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
summary=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E '^(ok|FAILED) \| [0-9]+ passed' | tail -1)
passed=$(echo "$summary" | sed -nE 's/.* ([0-9]+) passed.*/\1/p')
failed=$(echo "$summary" | sed -nE 's/.* ([0-9]+) failed.*/\1/p')
ignored=$(echo "$summary" | sed -nE 's/.* ([0-9]+) ignored.*/\1/p')
# Name every failed test just above the closing line (deno lists them under " FAILURES ").
failures=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | awk '/^ FAILURES *$/ {on=1; next} /^(ok|FAILED) \|/ {on=0} on && /=>/ {print "failed test: " $0}')
rm -f "$log"
[ -n "$failures" ] && echo "$failures"
if [ -z "$passed" ]; then
  echo "0 passed, 1 failed"
  exit $(( rc == 0 ? 1 : rc ))
fi
echo "${passed} passed, ${failed:-0} failed, ${ignored:-0} skipped"
exit $rc
