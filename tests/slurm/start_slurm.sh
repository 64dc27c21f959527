#!/usr/bin/env bash
# Starts a private single-node Slurm (munged + slurmctld + slurmd) for tests, installing Debian's
# packages first if they are missing. Everything lives in one folder; nothing systemd-wide.
#
#   tests/slurm/start_slurm.sh [DIR]     (default DIR: /tmp/comodal-slurm-$UID)
#
# Environment: SLURM_CPUS (CPUs the node offers; default: the machine's cores; more than the
# machine has is allowed for tests of many trivial jobs), SLURM_PORT_BASE (default 16817).
# On success prints "SLURM_CONF=<DIR>/slurm.conf" as its last line; the PIDs it started are in
# DIR/pids (stop with tests/slurm/stop_slurm.sh DIR). Exit 2: Slurm cannot be installed here.
set -euo pipefail
DIR=${1:-/tmp/comodal-slurm-$(id -u)}
CPUS=${SLURM_CPUS:-$(nproc)}
PORT=${SLURM_PORT_BASE:-16817}
log() { echo "[slurm] $*" >&2; }

need_install=""
for b in munged slurmctld slurmd sbatch; do
  command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || need_install=1
done
if [ -n "$need_install" ]; then
  log "installing slurmctld slurmd slurm-client munge with apt-get"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  export DEBIAN_FRONTEND=noninteractive
  if ! $SUDO apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null 2>&1; then
    $SUDO apt-get update -qq >/dev/null 2>&1 || true
    $SUDO apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null 2>&1 || {
      log "cannot install Slurm with apt-get (no root, or no package source)"; exit 2; }
  fi
fi
PATH=/usr/sbin:$PATH

if [ -f "$DIR/pids" ]; then
  alive=1
  for pid in $(cat "$DIR/pids"); do kill -0 "$pid" 2>/dev/null || alive=0; done
  if [ "$alive" = 1 ] && SLURM_CONF=$DIR/slurm.conf sinfo -h -o %t 2>/dev/null | grep -q idle; then
    log "already running in $DIR"
    echo "SLURM_CONF=$DIR/slurm.conf"
    exit 0
  fi
  bash "$(dirname "$0")/stop_slurm.sh" "$DIR" || true
fi

mkdir -p "$DIR"/{state,spool,log,munge}
chmod 755 "$DIR"
# munged insists on its own user owning its files and on a socket folder others cannot list.
if [ "$(id -u)" = 0 ]; then
  chown munge:munge "$DIR/munge"
  chmod 711 "$DIR/munge"
  dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
  chown munge:munge "$DIR/munge/munge.key"
  chmod 400 "$DIR/munge/munge.key"
  RUN_MUNGE=(runuser -u munge --)
  SLURM_USER=root
else
  chmod 700 "$DIR/munge"
  dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$DIR/munge/munge.key"
  RUN_MUNGE=()
  SLURM_USER=$(id -un)
fi
SOCK=$DIR/munge/munge.socket
"${RUN_MUNGE[@]}" munged -F --socket="$SOCK" --key-file="$DIR/munge/munge.key" \
  --log-file="$DIR/munge/munged.log" --pid-file="$DIR/munge/munged.pid" \
  --seed-file="$DIR/munge/munged.seed" >/dev/null 2>&1 &
MUNGE_PID=$!
echo "$MUNGE_PID" > "$DIR/pids"
for _ in $(seq 50); do [ -S "$SOCK" ] && break; sleep 0.1; done
[ -S "$SOCK" ] || { log "munged did not start; see $DIR/munge/munged.log"; exit 1; }

MEM_MB=$(awk '/MemTotal/ {print int($2/1024) - 512}' /proc/meminfo)
cat > "$DIR/slurm.conf" <<EOF
ClusterName=comodal
SlurmctldHost=localhost
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK
SlurmUser=$SLURM_USER
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
DependencyParameters=kill_invalid_depend
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,default_queue_depth=1000
SlurmdParameters=config_overrides
MinJobAge=3600
MaxArraySize=10001
ReturnToService=2
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
InactiveLimit=0
KillWait=5
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
export SLURM_CONF=$DIR/slurm.conf
slurmctld -D -f "$SLURM_CONF" >>"$DIR/log/slurmctld.out" 2>&1 &
echo $! >> "$DIR/pids"
slurmd -D -N localhost -f "$SLURM_CONF" >>"$DIR/log/slurmd.out" 2>&1 &
echo $! >> "$DIR/pids"
for _ in $(seq 100); do
  state=$(sinfo -h -o %t 2>/dev/null || true)
  [ "$state" = idle ] && break
  sleep 0.2
done
if [ "$state" != idle ]; then
  log "node not idle after 20 s (state '$state'); logs in $DIR/log"
  tail -5 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
  exit 1
fi
log "running in $DIR ($CPUS CPUs, pids $(tr '\n' ' ' < "$DIR/pids"))"
echo "SLURM_CONF=$SLURM_CONF"
