#!/usr/bin/env bash
# Side-by-side, one machine, one run: shardmail against the reference servers started
# from ../shared/reference (Postfix 3.7, Dovecot 2.3), driven by the same tools.
#
#   SMTP durable ingest: Postfix's own smtp-source (20 connections, 5 KiB, -d) against
#     shardmail, reference Postfix (queue fsync before 250), and smtp-sink (stores
#     nothing: the ceiling of the load tool on this machine).
#   POP3: shardmail-load pop3 (pipelined RETR of every message, 8 connections) against
#     shardmail and Dovecot, each seeded with the same messages.
#   IMAP: shardmail-load imap (8 connections) on the same mailboxes: FETCH of whole
#     messages, FETCH of headers, the mixed workload without and with IDLE wake-ups in
#     long sessions, and a login-heavy mix (20 operations per session).
#   IMAPS and POP3S: the FETCH and retrieval runs again over implicit TLS.
#
# Like with like: every mailbox workload runs against Dovecot twice, with {PLAIN}
# passwords and with argon2id ones (SCHEME=ARGON2ID: libsodium, 64 MiB, t=3), and the
# login-heavy ones a third time with Dovecot's auth cache (AUTH_CACHE=1); shardmail
# runs with its defaults (argon2id 19 MiB t=2, login cache on) and, where logins
# matter, with limits.auth_cache_secs=0. Beside each throughput: the server's CPU per
# operation (user+system of the server's processes from /proc, reaped children
# included), steadier than wall time on a shared host.
#
# Usage: loadtest/compare.sh            (as root: it installs and starts the references)
#        loadtest/compare_table.py compare.json   the README's table from the results
# Env:   MESSAGES=20000 POP3_MESSAGES=300 POP3_SESSIONS=256 OUT=compare.json
#        RUNS=3 repeats every measurement and reports the median run (default 1)
#        KEEP=1 keeps the temporary shardmail data and logs (path printed at the end)
# Every loop is bounded; every server listens on loopback only; everything started here
# is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${MESSAGES:-20000}
POP3_MESSAGES=${POP3_MESSAGES:-300}
POP3_SESSIONS=${POP3_SESSIONS:-256}
OUT=${OUT:-compare.json}
REF=${REF:-../shared/reference}
WORK=$(mktemp -d /tmp/shardmail-compare.XXXXXX)
B=target/release/shardmail
L=target/release/shardmail-load
SM_SMTP=127.0.0.1:3525
SM_POP3=127.0.0.1:3110
SM_IMAP=127.0.0.1:3143
SM_POP3S=127.0.0.1:3995
SM_IMAPS=127.0.0.1:3993
IMAP_OPS=${IMAP_OPS:-1000}
IMAP_SESSIONS=${IMAP_SESSIONS:-400}

# Processes this script started, stopped by their pid (never by name: an operator's
# own shardmail or smtp-sink must survive a comparison run).
SM_PID=
SINK_PID=
stop_pid() {
  local pid=$1
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  # Gone, or exited and waiting to be reaped (a zombie): done.
  for _ in $(seq 100); do
    grep -qs '^State:[[:space:]]*[^Z]' "/proc/$pid/status" || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
DOVECOT_ROOT=/tmp/dovecot-ref
stop_dovecot() {
  [ -s "$DOVECOT_ROOT/run/master.pid" ] || return 0
  stop_pid "$(cat "$DOVECOT_ROOT/run/master.pid")"
  rm -f "$DOVECOT_ROOT/run/master.pid"
}
cleanup() {
  stop_pid "$SM_PID"
  stop_pid "$SINK_PID"
  postfix stop >/dev/null 2>&1 || true
  stop_dovecot
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*" >&2; }
# Wall-clock seconds of a command; fails (and so stops the run) if the command fails,
# so a refused connection is never reported as a fast run.
seconds() {
  local out
  out=$( { /usr/bin/time -f %e "$@" >/dev/null 2>"$WORK/last.err"; } 2>&1 ) || {
    echo "failed: $* ($(tail -1 "$WORK/last.err"))" >&2; return 1; }
  tail -1 "$WORK/last.err"
}
rate() { python3 -c "print(round($1 / $2))"; }
RUNS=${RUNS:-1}; export RUNS
pop3j() { $L pop3 "$@" --json 2>/dev/null; }
# Median wall-clock seconds of RUNS runs of a command.
median_seconds() {
  local ts=()
  for _ in $(seq "$RUNS"); do ts+=("$(seconds "$@")"); done
  python3 -c 'import sys, statistics; print(statistics.median(map(float, sys.argv[1:])))' "${ts[@]}"
}
# Of RUNS runs of a command printing a JSON report, the one with the median KEY.
median_json() {
  local key=$1; shift
  local out=()
  for _ in $(seq "$RUNS"); do out+=("$("$@")"); done
  python3 -c 'import sys, json
k = sys.argv[1]
runs = sorted((json.loads(a) for a in sys.argv[2:]), key=lambda r: r[k])
print(json.dumps(runs[len(runs) // 2]))' "$key" "${out[@]}"
}

step "building (release)"
cargo build --release --locked -q
command -v smtp-source >/dev/null || { echo "smtp-source missing: run $REF/start-postfix.sh once" >&2; exit 1; }

step "host"
echo "$(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB, $(uname -r), $(df -T /tmp | awk 'NR==2{print $2}') /tmp" >&2

SOURCE=(smtp-source -4 -s 20 -m "$MESSAGES" -l 5120 -d -f bench@bench.test -t sink@bench.test)

step "smtp-sink (no storage): the load tool's ceiling here"
smtp-sink -u nobody -c 127.0.0.1:3526 1000 >/dev/null 2>&1 &
SINK_PID=$!
sleep 0.5
t_sink=$(median_seconds "${SOURCE[@]}" 127.0.0.1:3526)
stop_pid "$SINK_PID"; SINK_PID=

step "reference Postfix (MODE=maildir, default queue fsync)"
MODE=maildir INFLOW=0 bash "$REF/start-postfix.sh" >/dev/null
t_postfix=$(median_seconds "${SOURCE[@]}" 127.0.0.1:10025)
postfix stop >/dev/null 2>&1 || true

step "shardmail (embedded defaults, 2 shards, group commit; auth checks off like Postfix's defaults)"
SM=(--data-dir "$WORK/sm" --set 'domains.local=["bench.test"]' --set auth.enabled=false
    --set "listen.smtp=\"$SM_SMTP\"" --set "listen.pop3=\"$SM_POP3\"" --set "listen.imap=\"$SM_IMAP\"" --set tls.allow_plaintext_auth=true
    --set 'listen.submission=[]' --set 'listen.submissions=[]'
    --set "listen.pop3s=\"$SM_POP3S\"" --set "listen.imaps=\"$SM_IMAPS\"")
echo pw | $B "${SM[@]}" user add sink@bench.test --password-stdin >/dev/null
for i in $(seq 1 8); do echo pass | $B "${SM[@]}" user add "testuser$i@bench.test" --password-stdin >/dev/null; done
# shellcheck source=loadtest/lib.sh
. loadtest/lib.sh # wait_ready
$B "${SM[@]}" serve 2>"$WORK/shardmail.log" &
SM_PID=$!
wait_ready "$WORK/shardmail.log"
t_shardmail=$(median_seconds "${SOURCE[@]}" "$SM_SMTP")

step "seeding POP3 maildrops: $POP3_MESSAGES messages x 8 users, 10 KiB"
python3 - "$SM_SMTP" "$POP3_MESSAGES" <<'PY'
import smtplib, sys
host, port = sys.argv[1].split(":")
n = int(sys.argv[2])
body = b"Subject: pop3 bench\r\n\r\n" + (b"x" * 76 + b"\r\n") * 130
with smtplib.SMTP(host, int(port)) as s:
    for i in range(1, 9):
        for _ in range(n):
            s.sendmail("seed@bench.test", [f"testuser{i}@bench.test"], body)
PY
rm -rf "$DOVECOT_ROOT"
TLS=1 bash "$REF/start-dovecot.sh" >/dev/null
python3 - "$POP3_MESSAGES" <<'PY'
import smtplib, sys
n = int(sys.argv[1])
body = b"Subject: pop3 bench\r\n\r\n" + (b"x" * 76 + b"\r\n") * 130
with smtplib.LMTP("127.0.0.1", 10024) as s:
    for i in range(1, 9):
        for _ in range(n):
            s.sendmail("seed@bench.test", [f"testuser{i}"], body)
PY

# The servers' own CPU: shardmail's process; every process of Dovecot's session
# (master, login, auth and the mail processes; exited ones through the master's
# reaped-children times).
tick=$(getconf CLK_TCK) # cpu_ticks: loadtest/lib.sh
server_pids() {
  case $1 in
    shardmail*) echo "$SM_PID" ;;
    *) pgrep -s "$(ps -o sid= -p "$(cat "$DOVECOT_ROOT/run/master.pid")" | tr -d ' ')" ;;
  esac
}
# with_cpu SERVER CMD...: CMD's JSON report plus "server_cpu_s", the server's CPU
# during it.
with_cpu() {
  local server=$1 before after out
  shift
  before=$(cpu_ticks $(server_pids "$server"))
  out=$("$@" --json 2>/dev/null) || return 1
  after=$(cpu_ticks $(server_pids "$server"))
  python3 -c 'import json, sys; r = json.loads(sys.argv[1]); r["server_cpu_s"] = (int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[4]); print(json.dumps(r))' \
    "$out" "$before" "$after" "$tick"
}

USERS_SM=(); USERS_DC=()
for i in $(seq 1 8); do USERS_SM+=(--user "testuser$i@bench.test"); USERS_DC+=(--user "testuser$i"); done
# Where each server listens, by protocol (plain, TLS).
addr() {
  case "$1/$2" in
    shardmail*/pop3) echo "$SM_POP3" ;; shardmail*/pop3s) echo "$SM_POP3S" ;;
    shardmail*/imap) echo "$SM_IMAP" ;; shardmail*/imaps) echo "$SM_IMAPS" ;;
    */pop3) echo 127.0.0.1:10110 ;; */pop3s) echo 127.0.0.1:10995 ;;
    */imap) echo 127.0.0.1:10143 ;; */imaps) echo 127.0.0.1:10993 ;;
  esac
}
users_of() { case $1 in shardmail*) echo "${USERS_SM[@]}" ;; *) echo "${USERS_DC[@]}" ;; esac; }
tls_of() { case $1 in *s) echo implicit ;; *) echo none ;; esac; }

# The workloads: NAME KIND PROTOCOL KEY ARGS... KIND: ro (reads only), rw (appends
# and changes flags), login (IMAP login-heavy: the default mix, which appends). KEY:
# the report's rate the median is taken of.
NO_IDLE=fetch_headers=30,fetch_body=30,store=15,search=10,append=5,noop=10
WORKLOADS=(
  "pop3_retrieval ro pop3 messages_per_s --sessions 8"
  "pop3s_retrieval ro pop3s messages_per_s --sessions 8"
  "imap_fetch_body ro imap ops_per_s --sessions 16 --ops $IMAP_OPS --mix fetch_body=1"
  "imaps_fetch_body ro imaps ops_per_s --sessions 16 --ops $IMAP_OPS --mix fetch_body=1"
  "imap_fetch_headers ro imap ops_per_s --sessions 16 --ops $IMAP_OPS --mix fetch_headers=1"
  "pop3_login_heavy ro pop3 messages_per_s --sessions $POP3_SESSIONS"
  "imap_mixed_no_idle rw imap ops_per_s --sessions 16 --ops $IMAP_OPS --mix $NO_IDLE"
  "imap_mixed rw imap ops_per_s --sessions 16 --ops $IMAP_OPS"
  "imap_login_heavy login imap ops_per_s --sessions $IMAP_SESSIONS --ops 20"
)
RESULTS=$WORK/results.jsonl
: > "$RESULTS"

# run_workloads SERVER KINDS: the workloads of these kinds against SERVER (a profile:
# shardmail, shardmail-nocache, dovecot-plain, dovecot-argon2id,
# dovecot-argon2id-cache), RUNS times each, the median kept.
run_workloads() {
  local server=$1 kinds=" $2 " w name kind proto key args
  for w in "${WORKLOADS[@]}"; do
    read -r name kind proto key args <<<"$w"
    [[ "$kinds" == *" $kind "* ]] || continue
    step "$name: $server"
    local tool=imap
    [[ $proto == pop3* ]] && tool=pop3
    # shellcheck disable=SC2046,SC2086
    median_json "$key" with_cpu "$server" $L "$tool" --server "$(addr "$server" "$proto")" -c 8 \
      --tls "$(tls_of "$proto")" --password pass $(users_of "$server") $args \
      | python3 -c 'import json, sys; r = json.load(sys.stdin); print(json.dumps({"workload": sys.argv[1], "server": sys.argv[2], "report": r}))' \
        "$name" "$server" >>"$RESULTS"
  done
}
restart() {
  stop_pid "$SM_PID"
  $B "${SM[@]}" "$@" serve 2>>"$WORK/shardmail.log" &
  SM_PID=$!
  wait_ready "$WORK/shardmail.log"
}
dovecot() {
  stop_dovecot
  ROOT=$DOVECOT_ROOT TLS=1 SCHEME=$1 AUTH_CACHE=$2 bash "$REF/start-dovecot.sh" >/dev/null
}

# Every profile reads the seeded mail first; then the workloads that append run, each
# Dovecot profile sharing one Maildir (so later Dovecot runs see a few hundred more
# small messages than shardmail's: against Dovecot, if anything).
restart
run_workloads shardmail ro
restart --set limits.auth_cache_secs=0
run_workloads shardmail-nocache ro
dovecot PLAIN 0
run_workloads dovecot-plain ro
dovecot ARGON2ID 0
run_workloads dovecot-argon2id ro
dovecot ARGON2ID 1
run_workloads dovecot-argon2id-cache ro
restart
run_workloads shardmail "rw login"
dovecot PLAIN 0
run_workloads dovecot-plain "rw login"
dovecot ARGON2ID 0
run_workloads dovecot-argon2id "rw login"
restart --set limits.auth_cache_secs=0
run_workloads shardmail-nocache login
dovecot ARGON2ID 1
run_workloads dovecot-argon2id-cache login

python3 - "$MESSAGES" "$t_sink" "$t_postfix" "$t_shardmail" "$RESULTS" "$OUT" <<'PY'
import json, os, sys
n, t_sink, t_pf, t_sm = int(sys.argv[1]), *map(float, sys.argv[2:5])
mailbox = {}
for line in open(sys.argv[5]):
    x = json.loads(line)
    r = x["report"]
    # Per operation: POP3 per message retrieved, IMAP per operation (logins excluded).
    count = r.get("messages_retrieved") or r.get("operations") or 1
    r["server_cpu_us_per_op"] = r["server_cpu_s"] * 1e6 / count
    logins = r.get("logins") or r.get("sessions") or 0
    r["server_cpu_us_per_login_session"] = r["server_cpu_s"] * 1e6 / max(logins, 1)
    mailbox.setdefault(x["workload"], {})[x["server"]] = r
result = {
    "runs": int(os.environ.get("RUNS", "1")),
    "smtp_msgs_per_s": {"smtp-sink": n / t_sink, "postfix": n / t_pf, "shardmail": n / t_sm},
    "mailbox": mailbox,
}
rate = lambda r: r.get("messages_per_s") or r.get("ops_per_s")
# Like with like: the same stored-hash kind and the same caching on both sides.
pairs = {
    "argon2id_both_cached": ("shardmail", "dovecot-argon2id-cache"),
    "argon2id_both_uncached": ("shardmail-nocache", "dovecot-argon2id"),
    "shardmail_uncached_vs_dovecot_plain": ("shardmail-nocache", "dovecot-plain"),
    "shardmail_default_vs_dovecot_argon2id": ("shardmail", "dovecot-argon2id"),
    "shardmail_default_vs_dovecot_plain": ("shardmail", "dovecot-plain"),
}
ratios = {}
for workload, by in mailbox.items():
    for label, (a, b) in pairs.items():
        if a in by and b in by:
            ratios.setdefault(workload, {})[label] = rate(by[a]) / rate(by[b])
result["ratios"] = ratios
result["smtp_ratios"] = {"shardmail_vs_postfix": t_pf / t_sm, "shardmail_vs_sink": t_sink / t_sm}
json.dump(result, open(sys.argv[6], "w"), indent=2)
print(f"(median of {result['runs']} run(s) each)")
for k, v in result["smtp_msgs_per_s"].items():
    print(f"SMTP ingest {k:22}{v:>10.0f} msg/s")
print(f"shardmail / Postfix {t_pf / t_sm:.1f}x, / smtp-sink {100 * t_sink / t_sm:.0f}%\n")
print(f"{'workload':22}{'server':24}{'rate/s':>10}{'p99 ms':>9}{'CPU us/op':>11}")
for workload, by in mailbox.items():
    for server, r in by.items():
        p99 = (r.get("latency_ms") or r.get("session_download_ms"))["p99"]
        print(f"{workload:22}{server:24}{rate(r):>10.0f}{p99:>9.2f}{r['server_cpu_us_per_op']:>11.0f}")
    for label, q in ratios.get(workload, {}).items():
        print(f"{'':22}  {label}: {q:.1f}x")
print(f"\nresults written to {sys.argv[6]}; loadtest/compare_table.py {sys.argv[6]} prints the README table")
PY
