#!/usr/bin/env bash
# Stops the private Slurm started by start_slurm.sh: first cancels the jobs of that cluster (and
# waits for them to end), then stops the PIDs recorded in DIR/pids, then ends any job step
# daemon (slurmstepd) that still holds files of DIR, by its PID.
#   tests/slurm/stop_slurm.sh [DIR]
set -uo pipefail
DIR=${1:-/tmp/comodal-slurm-$(id -u)}
[ -f "$DIR/pids" ] || exit 0
PATH=/usr/sbin:$PATH

if [ -f "$DIR/slurm.conf" ]; then
  export SLURM_CONF=$DIR/slurm.conf
  jobs=$(timeout 5 squeue -h -o %A 2>/dev/null | sort -u)
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086
    timeout 5 scancel $jobs 2>/dev/null || true
    for _ in $(seq 100); do
      [ -z "$(timeout 5 squeue -h -t PD,R,CG,S -o %A 2>/dev/null)" ] && break
      sleep 0.1
    done
  fi
fi

pids=$(tac "$DIR/pids")
for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
left=""
for _ in $(seq 50); do
  left=""
  for pid in $pids; do kill -0 "$pid" 2>/dev/null && left="$left $pid"; done
  [ -z "$left" ] && break
  sleep 0.1
done
for pid in $left; do kill -KILL "$pid" 2>/dev/null || true; done

# Job step daemons outlive slurmd when a job was still ending; they hold files under DIR.
for proc in /proc/[0-9]*; do
  pid=${proc#/proc/}
  case "$(tr '\0' ' ' < "$proc/cmdline" 2>/dev/null)" in
    slurmstepd*)
      if ls -l "$proc/fd" 2>/dev/null | grep -q -- "-> $DIR/"; then kill -KILL "$pid" 2>/dev/null || true; fi
      ;;
  esac
done
rm -f "$DIR/pids"
