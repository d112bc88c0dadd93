#!/usr/bin/env bash
# What an IMAP login costs, side by side with Dovecot storing the same kind of hash:
# CONNECTIONS clients (default 8) log in at once, again and again (LOGIN, SELECT, one
# NOOP, LOGOUT: `shardmail-load imap --ops 1 --mix noop=1`), for ROUNDS rounds of
# each profile, after four unmeasured logins per client; the load tool's login p50/p99
# (connect to tagged OK of LOGIN) and the server's CPU per login (from /proc/PID/stat
# of shardmail, of every process of Dovecot's session for Dovecot).
#
#   argon2       shardmail, limits.auth_cache_secs=0: every login runs argon2id
#                (19 MiB, t=2) on the password pool
#   cached       shardmail's default (limits.auth_cache_secs=300)
#   app          shardmail, every client logging in with an app password
#   dovecot      Dovecot 2.3 with SCHEME=ARGON2ID (libsodium argon2id, 64 MiB, t=3),
#                no auth cache: ../shared/reference/start-dovecot.sh
#   dovecot-cache  the same with AUTH_CACHE=1
#
# Loopback only; every process started here is stopped by its pid (Dovecot by its
# master.pid). Needs root for Dovecot (skipped otherwise, or with PROFILES=…).
#
#   cargo build --release && loadtest/login_latency.sh
set -u
cd "$(dirname "$0")/.."
BIN=target/release # start_server runs $BIN/shardmail
B=$BIN/shardmail
L=target/release/shardmail-load
REF=${REF:-../shared/reference}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-8}
SESSIONS=${SESSIONS:-400}
PROFILES=${PROFILES:-argon2 cached app dovecot dovecot-cache}
PORT=${PORT:-13143}
DOVECOT_ROOT=/tmp/dovecot-login-ref
tick=$(getconf CLK_TCK)
work=$(mktemp -d /tmp/shardmail-login.XXXX)
SERVER_PID=
stop_dovecot() {
  [ -s "$DOVECOT_ROOT/run/master.pid" ] || return 0
  local pid
  pid=$(cat "$DOVECOT_ROOT/run/master.pid")
  kill "$pid" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -rf "$DOVECOT_ROOT"
}
cleanup() {
  [ -n "$SERVER_PID" ] && kill -TERM "$SERVER_PID" 2>/dev/null
  stop_dovecot
  rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=loadtest/lib.sh
. loadtest/lib.sh # cpu_ticks, start_server, stop_server
dovecot_pids() { pgrep -s "$(ps -o sid= -p "$(cat "$DOVECOT_ROOT/run/master.pid")" | tr -d ' ')" 2>/dev/null; }

# run LABEL SERVER PASSWORD CPU_PIDS_COMMAND USERS...: one round; prints one result line.
run() {
  local label=$1 server=$2 password=$3 pids_cmd=$4
  shift 4
  local users=()
  for u in "$@"; do users+=(--user "$u"); done
  local before after
  # Warm-up (not measured): four logins per client, so the cached profiles measure the
  # steady state of clients that log in again, and every server has its processes up.
  "$L" imap --server "$server" -c "$CONNECTIONS" --sessions $((CONNECTIONS * 4)) --ops 1 --mix noop=1 \
    --password "$password" "${users[@]}" --duration-secs 60 >/dev/null 2>&1
  before=$(cpu_ticks $($pids_cmd))
  "$L" imap --server "$server" -c "$CONNECTIONS" --sessions "$SESSIONS" --ops 1 --mix noop=1 \
    --password "$password" "${users[@]}" --duration-secs 120 --json >"$work/out.json" 2>"$work/err"
  after=$(cpu_ticks $($pids_cmd))
  python3 - "$label" "$work/out.json" "$before" "$after" "$tick" <<'EOF'
import json, sys
label, path, before, after, tick = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
r = json.load(open(path))
login = r["per_operation"]["login"]["latency_ms"]
cpu_us = (after - before) / tick * 1e6 / max(r["sessions"], 1)
print(f"{label:<14} logins {r['sessions']:>5}  {r['logins_per_s']:>7.0f}/s  login p50 "
      f"{login['p50']:>7.2f} ms  p99 {login['p99']:>7.2f} ms  server CPU {cpu_us:>7.0f} us/login"
      f"  errors {r['errors']}")
EOF
}

shard_pid() { echo "$SERVER_PID"; }
# Plain IMAP with LOGIN allowed on loopback, as Dovecot's reference is set up.
SM=(--data-dir "$work/data" --set 'domains.local=["example.test"]' --set auth.enabled=false
    --set "listen.imap=\"127.0.0.1:$PORT\"" --set tls.allow_plaintext_auth=true
    --set 'listen.smtp=[]' --set 'listen.submission=[]' --set 'listen.submissions=[]'
    --set 'listen.pop3=[]' --set 'listen.pop3s=[]' --set 'listen.imaps=[]')
# A fresh data directory with the accounts and an app password, then the server
# (start_server / stop_server: loadtest/lib.sh).
start_shardmail() {
  rm -rf "$work/data"
  for i in $(seq 1 "$CONNECTIONS"); do
    echo pw | "$B" "${SM[@]}" user add "login$i@example.test" --password-stdin >/dev/null
  done
  "$B" "${SM[@]}" user app-password add login1@example.test --label bench >"$work/app"
  start_server "$work/server.log" "${SM[@]}" --set "limits.auth_cache_secs=$1"
}

users=()
for i in $(seq 1 "$CONNECTIONS"); do users+=("login$i@example.test"); done
echo "host: $(nproc) cores, $(uname -r); $CONNECTIONS clients at once, $SESSIONS logins per round, $ROUNDS rounds"
for profile in $PROFILES; do
  for round in $(seq 1 "$ROUNDS"); do
    case $profile in
      argon2 | cached | app)
        cache=300
        [ "$profile" = argon2 ] && cache=0
        start_shardmail "$cache"
        if [ "$profile" = app ]; then
          secret=$(sed -n 2p "$work/app")
          app_users=()
          for _ in "${users[@]}"; do app_users+=(login1@example.test); done
          run "$profile" "127.0.0.1:$PORT" "$secret" shard_pid "${app_users[@]}"
        else
          run "$profile" "127.0.0.1:$PORT" pw shard_pid "${users[@]}"
        fi
        stop_server
        ;;
      dovecot | dovecot-cache)
        if [ "$(id -u)" != 0 ]; then echo "$profile: skipped (needs root)"; break; fi
        cache=0
        [ "$profile" = dovecot-cache ] && cache=1
        ROOT=$DOVECOT_ROOT SCHEME=ARGON2ID AUTH_CACHE=$cache "$REF/start-dovecot.sh" >/dev/null
        dc_users=()
        for i in $(seq 1 "$CONNECTIONS"); do dc_users+=("testuser$(( (i - 1) % 10 + 1 ))"); done
        run "$profile" 127.0.0.1:10143 pass dovecot_pids "${dc_users[@]}"
        stop_dovecot
        ;;
    esac
  done
done
