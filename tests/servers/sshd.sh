#!/bin/sh
# A throwaway OpenSSH server for tests and benchmarks, on 127.0.0.1 only.
#
#   sshd.sh start DIR [PORT]   keys, config and a running sshd in DIR (a free port unless
#                              PORT); writes DIR/port, DIR/pid, DIR/known_hosts,
#                              DIR/fingerprint; user keys DIR/id_ed25519, id_ecdsa, id_rsa,
#                              id_ed25519_pass (passphrase in DIR/passphrase); as root also a
#                              password user (DIR/password_user, DIR/password)
#   sshd.sh stop DIR           stops that sshd and its connections, by the PIDs it recorded
#   sshd.sh restart DIR        stop, then start again on the same port with the same host key
#   sshd.sh rekey DIR          new host key (a "changed host key"), then restart
#   SSHD_SETENV="NAME=value"   (optional) a variable every session gets (sshd's SetEnv)
#
# Every wait is bounded.  The server logs to DIR/sshd.log.
set -eu

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: sshd.sh start|stop|restart|rekey DIR [PORT]" >&2; exit 2; }
SSHD=${SSHD:-/usr/sbin/sshd}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

keys() {
    mkdir -p "$dir"
    chmod 700 "$dir"
    [ -f "$dir/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C fixture-host -f "$dir/host_ed25519"
    [ -f "$dir/host_ecdsa" ] || ssh-keygen -q -t ecdsa -N '' -C fixture-host -f "$dir/host_ecdsa"
    [ -f "$dir/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C fixture-user -f "$dir/id_ed25519"
    [ -f "$dir/id_ecdsa" ] || ssh-keygen -q -t ecdsa -b 256 -N '' -C fixture-user -f "$dir/id_ecdsa"
    [ -f "$dir/id_rsa" ] || ssh-keygen -q -t rsa -b 2048 -N '' -C fixture-user -f "$dir/id_rsa"
    if [ ! -f "$dir/id_ed25519_pass" ]; then
        "$PY" -c 'import secrets; print(secrets.token_hex(12))' > "$dir/passphrase"
        ssh-keygen -q -t ed25519 -N "$(cat "$dir/passphrase")" -C fixture-user-pass \
            -f "$dir/id_ed25519_pass"
    fi
    cat "$dir/id_ed25519.pub" "$dir/id_ecdsa.pub" "$dir/id_rsa.pub" \
        "$dir/id_ed25519_pass.pub" > "$dir/authorized_keys"
    chmod 600 "$dir/authorized_keys"
}

# One throwaway account per fixture directory: with one shared name, a fixture started by
# a parallel test run (another checkout on the machine) set its own password on it and
# this one's logins were rejected.  Removed by `stop` (not by restart or rekey).
fixture_user() {
    echo "ctt$(printf '%s' "$dir" | sha256sum | cut -c1-12)"
}

password_user() {
    # only as root, and only a throwaway account made for this purpose
    [ "$(id -u)" = 0 ] || return 0
    user=$(fixture_user)
    if ! id "$user" >/dev/null 2>&1; then
        useradd -m -s /bin/sh "$user" >/dev/null 2>&1 || return 0
    fi
    [ -f "$dir/password" ] || "$PY" -c 'import secrets; print(secrets.token_urlsafe(16))' > "$dir/password"
    echo "$user:$(cat "$dir/password")" | chpasswd 2>/dev/null || { rm -f "$dir/password"; return 0; }
    echo "$user" > "$dir/password_user"
}

config() {
    port=$1
    cat > "$dir/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $port
HostKey $dir/host_ed25519
HostKey $dir/host_ecdsa
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication yes
KbdInteractiveAuthentication no
PermitRootLogin yes
UsePAM no
UseDNS no
MaxStartups 100
MaxSessions 100
LogLevel VERBOSE
Subsystem sftp internal-sftp
EOF
    # SSHD_SETENV="NAME=value ...": variables every session gets (test_slurm: SLURM_CONF)
    if [ -n "${SSHD_SETENV:-}" ]; then echo "SetEnv $SSHD_SETENV" >> "$dir/sshd_config"; fi
}

known_hosts() {
    port=$(cat "$dir/port")
    : > "$dir/known_hosts"
    for k in host_ed25519 host_ecdsa; do
        printf '[127.0.0.1]:%s %s\n' "$port" "$(cut -d' ' -f1,2 "$dir/$k.pub")" >> "$dir/known_hosts"
    done
    ssh-keygen -lf "$dir/host_ed25519.pub" | cut -d' ' -f2 > "$dir/fingerprint"
}

# Until our sshd has bound the port, as its own log says from byte $2 on (a connect could
# reach another program that took the port): 0 listening, 1 the bind failed, 2 gave up
# (a 30 s guard).
wait_listening() {
    i=0
    while [ $i -lt 1500 ]; do
        new=$(tail -c +"$2" "$dir/sshd.log" 2>/dev/null || true)
        case $new in
        *"Server listening on 127.0.0.1 port $1."*) return 0 ;;
        *"Bind to port $1 on 127.0.0.1 failed"* | *"Cannot bind any address"*) return 1 ;;
        esac
        sleep 0.02
        i=$((i + 1))
    done
    return 2
}

start() {
    fixed=${1:-}
    mkdir -p /run/sshd 2>/dev/null || true
    keys
    password_user
    tries=0
    while :; do
        port=${fixed:-$(free_port)}
        config "$port"
        echo "$port" > "$dir/port"
        known_hosts
        from=$(($(cat "$dir/sshd.log" 2>/dev/null | wc -c) + 1))
        rm -f "$dir/sshd.pid"
        "$SSHD" -f "$dir/sshd_config" -E "$dir/sshd.log" || true
        rc=0
        wait_listening "$port" "$from" || rc=$?
        [ $rc -eq 0 ] && break
        tries=$((tries + 1))
        # a port picked here and taken by another program before sshd bound it: pick again
        [ $rc -eq 1 ] && [ -z "$fixed" ] && [ $tries -lt 5 ] && continue
        echo "sshd did not listen on 127.0.0.1:$port (see $dir/sshd.log)" >&2
        exit 1
    done
    i=0
    while [ ! -s "$dir/sshd.pid" ] && [ $i -lt 1500 ]; do sleep 0.02; i=$((i + 1)); done
    [ -s "$dir/sshd.pid" ] || { echo "sshd did not start (see $dir/sshd.log)" >&2; exit 1; }
    cp "$dir/sshd.pid" "$dir/pid"
}

descendants() {
    for c in $(pgrep -P "$1" 2>/dev/null || true); do
        echo "$c"
        descendants "$c"
    done
}

stop() {
    [ -f "$dir/pid" ] || return 0
    pid=$(cat "$dir/pid")
    # the listener and every process of the connections it forked (a real restart drops
    # them too), all listed before any is killed: an orphan would leave the list
    all=$(descendants "$pid")
    kill -STOP $all 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
    for k in $all; do kill -9 "$k" 2>/dev/null || true; done
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.02; i=$((i + 1)); done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/pid" "$dir/sshd.pid"
}

remove_user() {
    [ -f "$dir/password_user" ] || return 0
    userdel -r "$(cat "$dir/password_user")" >/dev/null 2>&1 || true
    rm -f "$dir/password_user"
}

case "$cmd" in
start) start "${3:-}" ;;
stop)
    stop
    remove_user
    ;;
restart)
    port=$(cat "$dir/port")
    stop
    start "$port"
    ;;
rekey)
    port=$(cat "$dir/port")
    stop
    cp "$dir/known_hosts" "$dir/known_hosts.old"
    rm -f "$dir/host_ed25519" "$dir/host_ed25519.pub" "$dir/host_ecdsa" "$dir/host_ecdsa.pub"
    start "$port"
    ;;
*) echo "sshd.sh: unknown command $cmd" >&2; exit 2 ;;
esac
