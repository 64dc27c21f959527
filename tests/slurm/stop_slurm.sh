#!/usr/bin/env bash
# Stops the private Slurm started by start_slurm.sh: only the PIDs it recorded in DIR/pids.
#   tests/slurm/stop_slurm.sh [DIR]
set -uo pipefail
DIR=${1:-/tmp/comodal-slurm-$(id -u)}
[ -f "$DIR/pids" ] || exit 0
pids=$(tac "$DIR/pids")
for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
for _ in $(seq 50); do
  left=""
  for pid in $pids; do kill -0 "$pid" 2>/dev/null && left="$left $pid"; done
  [ -z "$left" ] && break
  sleep 0.1
done
for pid in $left; do kill -KILL "$pid" 2>/dev/null || true; done
rm -f "$DIR/pids"
