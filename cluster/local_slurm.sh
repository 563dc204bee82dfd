#!/usr/bin/env bash
# A single-node SLURM on localhost, with accounting: munged, MariaDB, slurmdbd,
# slurmctld and slurmd, for the cluster tests and for trying `bioscale launch`
# / `bioscale sweep` on one machine.
#
#   cluster/local_slurm.sh up       install missing Debian packages, write the
#                                   configs, start whatever is not running
#   cluster/local_slurm.sh down     cancel this cluster's remaining jobs, stop
#                                   exactly the daemons this script started
#   cluster/local_slurm.sh status   which of them run; exit 0 when all do
#
# Needs root (daemons, /etc/slurm). Every daemon writes its pid file under
# $BIOSCALE_SLURM_DIR (default /var/lib/bioscale-slurm); `down` stops those
# pids only, after checking each is still the program we started (a pid can be
# reused), so a system munged or mysqld elsewhere is never touched. Job state
# and the accounting database stay in that directory across down/up: job ids
# keep increasing, so ids recorded by earlier sweeps never name a new job.
#
# Settings that make tests fast (measured, see docs/cluster.md):
# cred_expire=5 and sched_interval=2 bring a requeue from ~170 s to ~8 s
# (a requeued job waits cred_expire + 1 s before it may start again);
# KillWait=5 because submitit ignores SIGTERM and waits for SIGKILL.
set -euo pipefail

DIR="${BIOSCALE_SLURM_DIR:-/var/lib/bioscale-slurm}"
CONF=/etc/slurm/slurm.conf
DBDCONF=/etc/slurm/slurmdbd.conf
MARKER="# written by bioscale cluster/local_slurm.sh"
CLUSTER=bioscale
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)
# slurmd needs -N: the node is called localhost whatever this host's name is.

say() { echo "[local_slurm] $*" >&2; }
die() { say "error: $*"; exit 1; }

# munged and mariadbd drop root and write their pid files as munge / mysql,
# so theirs live in directories those users own.
pidfile() {
    case "$1" in
        munged) echo "$DIR/munge/munged.pid" ;;
        mariadbd) echo "$DIR/mysql/mariadbd.pid" ;;
        *) echo "$DIR/run/$1.pid" ;;
    esac
}

# The pid of daemon $1 if the process in its pid file is alive and is that
# program (checked through /proc/PID/exe), else nothing.
running_pid() {
    local f pid exe
    f="$(pidfile "$1")"
    [ -s "$f" ] || return 0
    pid="$(tr -dc 0-9 <"$f")"
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 0
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
    case "$(basename "${exe% (deleted)}")" in
        "$1" | "$1"-wlm) echo "$pid" ;;
        mysqld) [ "$1" = mariadbd ] && echo "$pid" ;;
    esac
    return 0
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2 i
    shift 2
    for ((i = 0; i < limit * 5; i++)); do
        # a client command can hang on a daemon still starting: bound each try
        if [ "$(type -t "$1")" = file ]; then timeout 5 "$@"; else "$@"; fi >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "$what did not come up within ${limit}s"
}

log_tail() { [ -f "$1" ] && tail -n 15 "$1" | sed 's/^/    /' >&2 || true; }

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" = 0 ] || die "missing Debian packages ${missing[*]}; install them as root"
    command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get"
    say "apt-get install ${missing[*]}"
    # The packages' postinst scripts try to start services through invoke-rc.d
    # and complain without systemd; harmless, we start the daemons ourselves.
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}")
    "${apt[@]}" >"$DIR/log/apt.log" 2>&1 || { apt-get update -q >>"$DIR/log/apt.log" 2>&1 && "${apt[@]}" >>"$DIR/log/apt.log" 2>&1; } \
        || { log_tail "$DIR/log/apt.log"; die "apt-get install ${missing[*]} failed (log: $DIR/log/apt.log)"; }
}

write_if_changed() {  # write_if_changed PATH MODE OWNER < content
    local tmp
    tmp="$(mktemp "$1.XXXXXX")"
    cat >"$tmp"
    chmod "$2" "$tmp"
    chown "$3" "$tmp"
    if [ -f "$1" ] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv -f "$tmp" "$1"; CHANGED=1; fi
}
CHANGED=0

check_ours() {  # never overwrite a real cluster's configuration
    local f
    for f in "$CONF" "$DBDCONF"; do
        if [ -f "$f" ] && ! grep -qF "$MARKER" "$f"; then
            die "$f exists and was not written by this script (a real SLURM setup?); not touching it"
        fi
    done
}

write_configs() {
    local cpus mem_mb
    cpus="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"  # nproc honours OMP_NUM_THREADS, which the test runner sets to 1
    # ~90% of RAM: slurmd drains a node whose RealMemory exceeds what it finds.
    mem_mb="$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)"
    mkdir -p /etc/slurm
    write_if_changed "$CONF" 644 root:root <<EOF
$MARKER
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=5,socket=$DIR/munge/munge.socket.2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=$(pidfile slurmd)
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
JobRequeue=1
ReturnToService=2
KillWait=5
MinJobAge=300
MailProg=/bin/true
MpiDefault=none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
# with slurmdbd this names the munge socket for accounting traffic (ours)
AccountingStoragePass=$DIR/munge/munge.socket.2
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    # slurmdbd refuses a config readable by others (it holds the DB password)
    write_if_changed "$DBDCONF" 600 root:root <<EOF
$MARKER
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket.2
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$(pidfile slurmdbd)
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=bioscale-local
StorageLoc=slurm_acct_db
EOF
}

start_munged() {
    [ -n "$(running_pid munged)" ] && return 0
    # munged insists on directories owned by munge and closed to others
    install -d -o munge -g munge -m 0755 "$DIR/munge"
    [ -s /etc/munge/munge.key ] || { mungekey -c -f -k /etc/munge/munge.key && chown munge:munge /etc/munge/munge.key; }
    rm -f "$DIR/munge/munge.socket.2" "$DIR/munge/munge.socket.2.lock"
    runuser -u munge -- /usr/sbin/munged --socket="$DIR/munge/munge.socket.2" \
        --pid-file="$(pidfile munged)" --log-file="$DIR/munge/munged.log" \
        --seed-file="$DIR/munge/munged.seed" \
        || { log_tail "$DIR/munge/munged.log"; die "munged failed to start"; }
    wait_for 10 munged test -S "$DIR/munge/munge.socket.2"
}

mysql_root() { mariadb --socket="$DIR/mysql/mysqld.sock" -u root "$@"; }

start_mariadb() {
    [ -n "$(running_pid mariadbd)" ] && return 0
    install -d -o mysql -g mysql -m 0750 "$DIR/mysql"
    local fresh=0
    if [ ! -d "$DIR/mysql/data/mysql" ]; then
        fresh=1
        mariadb-install-db --user=mysql --datadir="$DIR/mysql/data" --skip-test-db \
            --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.log" 2>&1 \
            || { log_tail "$DIR/log/mariadb-install.log"; die "mariadb-install-db failed"; }
    fi
    # Unix socket only: nothing listens on the network.
    /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DIR/mysql/data" --skip-networking \
        --socket="$DIR/mysql/mysqld.sock" --pid-file="$(pidfile mariadbd)" \
        --log-error="$DIR/mysql/mariadb.log" --innodb-buffer-pool-size=64M \
        --innodb-lock-wait-timeout=900 >/dev/null 2>&1 &
    disown
    wait_for 60 "MariaDB (log: $DIR/mysql/mariadb.log)" mysql_root -e "select 1"
    if [ $fresh = 1 ] || ! mysql_root -e "select 1 from mysql.user where user='slurm'" | grep -q 1; then
        mysql_root -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'bioscale-local';
                       GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
    fi
}

start_slurmdbd() {
    [ -n "$(running_pid slurmdbd)" ] && return 0
    # libmariadb connects to "localhost" through MYSQL_UNIX_PORT: our socket,
    # not a system server's.
    MYSQL_UNIX_PORT="$DIR/mysql/mysqld.sock" /usr/sbin/slurmdbd \
        || { log_tail "$DIR/log/slurmdbd.log"; die "slurmdbd failed to start"; }
    wait_for 30 "slurmdbd (log: $DIR/log/slurmdbd.log)" sacctmgr -n list cluster
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
}

start_slurmctld() {
    [ -n "$(running_pid slurmctld)" ] && return 0
    /usr/sbin/slurmctld || { log_tail "$DIR/log/slurmctld.log"; die "slurmctld failed to start"; }
    wait_for 30 "slurmctld (log: $DIR/log/slurmctld.log)" scontrol ping
}

node_idle() { timeout 5 sinfo -h -N -n localhost -o %t | grep -qE '^(idle|mix|alloc)'; }

start_slurmd() {
    if [ -z "$(running_pid slurmd)" ]; then
        /usr/sbin/slurmd -N localhost || { log_tail "$DIR/log/slurmd.log"; die "slurmd failed to start"; }
    fi
    # A node left drained by an earlier unclean stop would accept no jobs.
    if sinfo -h -N -n localhost -o %t 2>/dev/null | grep -qE '^(drain|down)'; then
        scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
    fi
    wait_for 30 "node localhost (sinfo; log: $DIR/log/slurmd.log)" node_idle
}

up() {
    [ "$(id -u)" = 0 ] || die "needs root (starts daemons, writes /etc/slurm)"
    mkdir -p "$DIR/run" "$DIR/log" "$DIR/state" "$DIR/spool"
    chmod 755 "$DIR"
    install_packages
    check_ours
    write_configs
    if [ $CHANGED = 1 ] && [ -n "$(running_pid slurmctld)$(running_pid slurmdbd)" ]; then
        # some settings (AuthInfo) are read only at start: restart, not reconfigure
        say "configuration changed: restarting the SLURM daemons"
        stop_group slurmd slurmctld
        stop_group slurmdbd
    fi
    start_munged
    start_mariadb
    start_slurmdbd
    start_slurmctld
    start_slurmd
    say "up: $(sinfo -h -o '%P %D node(s) %c CPUs %m MB %t') (state in $DIR)"
}

stop_group() {  # SIGTERM the named daemons together, wait, SIGKILL stragglers
    local d pid pids=() names=() i
    for d in "$@"; do
        pid="$(running_pid "$d")"
        if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; pids+=("$pid"); names+=("$d"); fi
        [ -n "$pid" ] || rm -f "$(pidfile "$d")"
    done
    for ((i = 0; i < ${#pids[@]}; i++)); do
        pid="${pids[$i]}"
        for _ in $(seq 1 150); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
        if [ -d "/proc/$pid" ]; then
            say "${names[$i]} (pid $pid) ignored SIGTERM for 15 s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$(pidfile "${names[$i]}")"
        say "stopped ${names[$i]} (pid $pid)"
    done
}

down() {
    # Jobs still running would outlive slurmd as orphaned processes: cancel
    # them first (they belong to this cluster), give them KillWait to end.
    local jobs
    if [ -n "$(running_pid slurmctld)" ]; then
        jobs="$(timeout 10 squeue -h -o %i 2>/dev/null | tr '\n' ' ')"
        if [ -n "${jobs// /}" ]; then
            say "cancelling jobs still queued or running: $jobs"
            timeout 10 scancel $jobs 2>/dev/null || true
            for _ in $(seq 1 40); do
                [ -z "$(timeout 10 squeue -h -t R,CG -o %i 2>/dev/null)" ] && break
                sleep 0.5
            done
        fi
    fi
    # compute node and controller first, then accounting, then what it needs
    stop_group slurmd slurmctld
    stop_group slurmdbd
    stop_group mariadbd munged
}

status() {
    local d pid rc=0
    for d in "${DAEMONS[@]}"; do
        pid="$(running_pid "$d")"
        if [ -n "$pid" ]; then echo "$d running (pid $pid)"; else echo "$d stopped"; rc=1; fi
    done
    [ $rc = 0 ] && sinfo -h -o 'partition %P: %D node(s), %c CPUs, %m MB, state %t' 2>/dev/null || true
    return $rc
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
