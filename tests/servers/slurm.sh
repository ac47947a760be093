#!/bin/sh
# A throwaway single-node Slurm cluster (munged, slurmctld, slurmd from Debian's slurm-wlm)
# for tests and benchmarks.
#
#   slurm.sh start DIR   munge key, slurm.conf and the three daemons, state in DIR; writes
#                        DIR/slurm.conf (export SLURM_CONF=DIR/slurm.conf to use it) and the
#                        daemons' PIDs in DIR/pids; waits until the node takes jobs
#   slurm.sh stop DIR    stops the daemons by the PIDs recorded in DIR/pids
#   slurm.sh forget DIR  restarts slurmctld with its state cleared (-c): the controller
#                        forgets every job, as one that lost its StateSaveLocation would
#
# The daemons cannot be told which address to bind: slurmctld and slurmd listen on every
# interface.  So `start` refuses to run outside a private network namespace (one where only
# the loopback interface exists, as `unshare --net` makes): nothing it starts can be reached
# from outside.  It raises lo and gives it a second loopback address (127.0.0.2): glibc's
# getaddrinfo(AI_ADDRCONFIG) ignores 127.0.0.1 and would otherwise resolve nothing.
#
# Partitions: `debug` (default, PriorityTier 1) and `high` (PriorityTier 10); a job in
# `high` preempts one in `debug`, which is requeued (PreemptMode=REQUEUE).  Accounting is
# off (no slurmdbd, no database): sacct answers "accounting storage is disabled", and
# finished jobs stay visible to `scontrol show job` for MinJobAge (600 s).  Jobs are
# scheduled as soon as they are submitted (batch_sched_delay=0; Slurm's default of 3 s lets
# it batch the scheduling of many submissions).
# Every wait is bounded.  Logs: DIR/slurmctld.log, DIR/slurmd.log, DIR/munged.log.
set -eu

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: slurm.sh start|stop|forget DIR" >&2; exit 2; }

private_netns() {
    # only "lo" may exist here
    others=$(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -vx lo || true)
    [ -z "$others" ]
}

config() {
    host=$(hostname -s)
    cat > "$dir/slurm.conf" <<CONF
ClusterName=ctarget-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/socket
CredType=cred/munge
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmdSpoolDir=$dir/spool
StateSaveLocation=$dir/state
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
MinJobAge=600
MaxJobCount=20000
KillWait=5
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName=$host NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP PriorityTier=1 OverSubscribe=NO
PartitionName=high Nodes=$host MaxTime=INFINITE State=UP PriorityTier=10 OverSubscribe=NO
CONF
}

wait_pidfile() {
    i=0
    while [ ! -s "$1" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
    [ -s "$1" ] || { echo "$2 did not start (see its log in $dir)" >&2; return 1; }
    cat "$1" >> "$dir/pids"
}

start() {
    private_netns || {
        echo "slurm.sh: refusing to start Slurm outside a private network namespace (its daemons listen on every interface): run it under 'unshare --net'" >&2
        exit 3
    }
    for p in munged slurmctld slurmd; do
        command -v $p >/dev/null 2>&1 || [ -x /usr/sbin/$p ] || {
            echo "slurm.sh: $p not found: install slurm-wlm and munge (scripts/install-deps.sh)" >&2
            exit 4
        }
    done
    export PATH="$PATH:/usr/sbin:/sbin"
    ip link set lo up
    ip addr add 127.0.0.2/8 dev lo 2>/dev/null || true
    mkdir -p "$dir/munge" "$dir/spool" "$dir/state"
    chmod 700 "$dir/munge"
    : > "$dir/pids"
    [ -f "$dir/munge/munge.key" ] || {
        dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 2>/dev/null
        chmod 600 "$dir/munge/munge.key"
    }
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/socket" \
        --pid-file="$dir/munge/pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/seed"
    wait_pidfile "$dir/munge/pid" munged
    config
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -f "$SLURM_CONF"
    wait_pidfile "$dir/slurmctld.pid" slurmctld
    slurmd -f "$SLURM_CONF"
    wait_pidfile "$dir/slurmd.pid" slurmd
    wait_idle
}

wait_idle() {
    i=0
    while [ $i -lt 300 ]; do
        st=$(sinfo -h -n "$(hostname -s)" -o '%T' 2>/dev/null | head -n1 || true)
        [ "$st" = idle ] && return 0
        sleep 0.1
        i=$((i + 1))
    done
    echo "slurm.sh: the node did not become idle within 30 s (state '${st:-}'; see $dir/slurmctld.log)" >&2
    exit 1
}

forget() {
    export PATH="$PATH:/usr/sbin:/sbin"
    export SLURM_CONF="$dir/slurm.conf"
    old=$(cat "$dir/slurmctld.pid")
    kill -TERM "$old"
    i=0
    while kill -0 "$old" 2>/dev/null && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
    kill -KILL "$old" 2>/dev/null || true
    grep -vx "$old" "$dir/pids" > "$dir/pids.new" || true
    mv "$dir/pids.new" "$dir/pids"
    rm -f "$dir/slurmctld.pid"
    slurmctld -c -f "$SLURM_CONF"
    wait_pidfile "$dir/slurmctld.pid" slurmctld
    wait_idle
}

stop() {
    [ -f "$dir/pids" ] || return 0
    pids=$(cat "$dir/pids")
    for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
    i=0
    while [ $i -lt 100 ]; do
        alive=
        for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ -z "$alive" ] && break
        sleep 0.05
        i=$((i + 1))
    done
    for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done
    rm -f "$dir/pids"
}

case "$cmd" in
start) start ;;
stop) stop ;;
forget) forget ;;
*) echo "usage: slurm.sh start|stop|forget DIR" >&2; exit 2 ;;
esac
