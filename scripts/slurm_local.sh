#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the `slurm` tests and for trying `runner launch slurm`.
#
#   scripts/slurm_local.sh start    install (Debian's slurm-wlm + munge) if needed, configure, start
#   scripts/slurm_local.sh stop     stop slurmctld, slurmd and munged
#   scripts/slurm_local.sh status   say whether the cluster answers
#
# Needs root (it installs packages and starts the daemons as root). The configuration is written for
# this machine: one node (this host, all its CPUs, no GPUs), one partition `debug`, process tracking
# by /proc (`proctrack/linuxproc`, no cgroup plugins, so it runs in containers), no accounting. It
# writes /etc/slurm/slurm.conf only when there is none or when the one there is its own (first line
# below), so a real cluster's configuration is never replaced.
set -euo pipefail

MARK="# fastinst-lab local test cluster (scripts/slurm_local.sh)"
CONF=/etc/slurm/slurm.conf
STATE=/var/spool/slurmctld-fastinst
SPOOL=/var/spool/slurmd-fastinst
LOGS=/var/log/slurm-fastinst
PIDS=/run/slurm-fastinst

need_root() {
  if [ "$(id -u)" != 0 ]; then echo "slurm_local.sh: must run as root (it installs and starts daemons)" >&2; exit 1; fi
}

install() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
  echo "installing slurm-wlm and munge (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y slurm-wlm munge >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y slurm-wlm munge >/dev/null; }
}

write_conf() {
  if [ -f "$CONF" ] && [ "$(head -n1 "$CONF")" != "$MARK" ]; then
    echo "slurm_local.sh: $CONF exists and is not ours; leaving it (and this script) alone" >&2
    exit 1
  fi
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  mkdir -p "$STATE" "$SPOOL" "$LOGS" "$PIDS" /etc/slurm
  cat >"$CONF" <<EOF
$MARK
ClusterName=fastinst-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=$PIDS/slurmctld.pid
SlurmdPidFile=$PIDS/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
  if pgrep -x munged >/dev/null; then return; fi
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null
  fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
  su -s /bin/sh munge -c "/usr/sbin/munged"
}

start() {
  need_root
  install
  write_conf
  start_munge
  pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
  pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
  for _ in $(seq 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      echo "slurm: one node ($(hostname -s), $(nproc) CPUs), partition debug; logs in $LOGS"
      return
    fi
    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  echo "slurm_local.sh: the cluster did not come up; see $LOGS" >&2
  sinfo >&2 || true
  exit 1
}

stop() {
  need_root
  for d in slurmd slurmctld; do pkill -x "$d" || true; done
  pkill -x munged || true
  echo "slurm: stopped"
}

status() {
  if sinfo -h -o '%P %T %N' 2>/dev/null; then exit 0; fi
  echo "slurm: not running"
  exit 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
