#!/usr/bin/env bash
# Bring up a single-node SLURM on this machine (Debian 12, as root, with or without systemd), for
# the SLURM tests (tests/test_slurm.py) and for trying the workflow's SLURM profile locally.
#
#   ci/slurm-single-node.sh               # slurmctld + slurmd, no accounting
#   ci/slurm-single-node.sh --accounting  # also mariadb + slurmdbd, with account `infoplane`
#
# Everything listens on the loopback interface: SlurmctldHost=<hostname>(127.0.0.1) and
# NodeAddr=127.0.0.1. The node is sized to `nproc` and the machine's memory. Running it again is
# harmless: packages, key and configuration are kept when present, running daemons are left
# alone. It returns when `sinfo` shows the node idle, or fails after SLURM_WAIT_S seconds
# (default 60) with the daemons' last log lines.
set -euo pipefail

ACCOUNTING=0
for arg in "$@"; do
  case "$arg" in
    --accounting) ACCOUNTING=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "slurm-single-node: unknown option $arg (use --accounting or --help)" >&2; exit 2 ;;
  esac
done
WAIT_S=${SLURM_WAIT_S:-60}
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
SPOOL=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd

fail() { echo "slurm-single-node: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "must run as root (it installs packages and starts daemons)"
command -v apt-get >/dev/null || fail "needs apt-get (a Debian or Ubuntu machine)"

# 1. packages
packages=(slurm-wlm munge)
[ "$ACCOUNTING" = 1 ] && packages+=(slurmdbd mariadb-server)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "slurm-single-node: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

running() { pgrep -x "$1" >/dev/null; }

# 2. munge: a key, and the daemon
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge
running munged || runuser -u munge -- /usr/sbin/munged
munge -n | unmunge >/dev/null || fail "munge does not work (see /var/log/munge/munged.log)"

# 3. slurm.conf sized to this machine
host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
mkdir -p "$CONF_DIR" "$LOG_DIR" "$SPOOL" "$SLURMD_SPOOL"
chown slurm:slurm "$LOG_DIR" "$SPOOL"
if [ "$ACCOUNTING" = 1 ]; then
  accounting="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobAcctGatherType=jobacct_gather/linux"
else
  accounting="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
conf=$(cat <<CONF
# written by ci/slurm-single-node.sh: one node, loopback only
ClusterName=infoplane
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
StateSaveLocation=${SPOOL}
SlurmdSpoolDir=${SLURMD_SPOOL}
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
# quick scheduling and short waits, for tests: a time-limited job gets SIGTERM, then SIGKILL
# KillWait seconds later; finished jobs stay visible to squeue for MinJobAge seconds
SchedulerParameters=sched_interval=2
KillWait=5
OverTimeLimit=0
MinJobAge=300
InactiveLimit=0
${accounting}
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF
)
if [ ! -f "$CONF_DIR/slurm.conf" ] || [ "$(cat "$CONF_DIR/slurm.conf")" != "$conf" ]; then
  printf '%s\n' "$conf" > "$CONF_DIR/slurm.conf"
  changed=1
else
  changed=0
fi

# 4. accounting (optional): mariadb, slurmdbd, the cluster and an account
if [ "$ACCOUNTING" = 1 ]; then
  if ! running mariadbd; then
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    (mysqld_safe >/dev/null 2>&1 &)
    for _ in $(seq 30); do mysqladmin ping >/dev/null 2>&1 && break; sleep 1; done
  fi
  mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
            CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  cat > "$CONF_DIR/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=slurm
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
LogFile=${LOG_DIR}/slurmdbd.log
PidFile=/run/slurmdbd.pid
CONF
  chown slurm:slurm "$CONF_DIR/slurmdbd.conf" && chmod 600 "$CONF_DIR/slurmdbd.conf"
  running slurmdbd || /usr/sbin/slurmdbd
  for _ in $(seq 30); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 1; done
  sacctmgr -i -Q add cluster infoplane >/dev/null 2>&1 || true
  sacctmgr -i -Q add account infoplane cluster=infoplane >/dev/null 2>&1 || true
  sacctmgr -i -Q add user root account=infoplane >/dev/null 2>&1 || true
fi

# 5. the daemons (restarted when the configuration changed)
if [ "$changed" = 1 ]; then
  for d in slurmctld slurmd; do
    pid=$(cat "/run/$d.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
      for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    fi
  done
fi
running slurmctld || /usr/sbin/slurmctld
running slurmd || /usr/sbin/slurmd

# 6. wait for the node
deadline=$((SECONDS + WAIT_S))
until sinfo -h -N -o '%T' 2>/dev/null | grep -qx idle; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "slurm-single-node: node ${host} not idle after ${WAIT_S} s; sinfo says:" >&2
    sinfo -N -l >&2 || true
    tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
    exit 1
  fi
  # a node left down or drained by an earlier run comes back
  scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true
  sleep 1
done
echo "slurm-single-node: node ${host} idle (${cpus} CPUs, ${mem_mb} MB; accounting: $([ "$ACCOUNTING" = 1 ] && echo slurmdbd || echo none))"
