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
#
# Usage: loadtest/compare.sh            (as root: it installs and starts the references)
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
cleanup() {
  stop_pid "$SM_PID"
  stop_pid "$SINK_PID"
  postfix stop >/dev/null 2>&1 || true
  [ -f /tmp/dovecot-ref/run/master.pid ] && kill "$(cat /tmp/dovecot-ref/run/master.pid)" 2>/dev/null || true
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
    --set 'listen.submission=[]' --set 'listen.submissions=[]' --set 'listen.pop3s=[]' --set 'listen.imaps=[]')
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
bash "$REF/start-dovecot.sh" >/dev/null
python3 - "$POP3_MESSAGES" <<'PY'
import smtplib, sys
n = int(sys.argv[1])
body = b"Subject: pop3 bench\r\n\r\n" + (b"x" * 76 + b"\r\n") * 130
with smtplib.LMTP("127.0.0.1", 10024) as s:
    for i in range(1, 9):
        for _ in range(n):
            s.sendmail("seed@bench.test", [f"testuser{i}"], body)
PY

USERS_SM=(); USERS_DC=()
for i in $(seq 1 8); do USERS_SM+=(--user "testuser$i@bench.test"); USERS_DC+=(--user "testuser$i"); done
# Two mixes: retrieval-heavy (one login per maildrop, everything downloaded) and
# login-heavy (POP3_SESSIONS logins over the same maildrops).
step "POP3 retrieval: shardmail"
retr_sm=$(median_json messages_per_s pop3j --server "$SM_POP3" -c 8 --sessions 8 --password pass "${USERS_SM[@]}")
step "POP3 retrieval: Dovecot"
retr_dc=$(median_json messages_per_s pop3j --server 127.0.0.1:10110 -c 8 --sessions 8 --password pass "${USERS_DC[@]}")
step "POP3 login-heavy: shardmail"
pop3_sm=$(median_json messages_per_s pop3j --server "$SM_POP3" -c 8 --sessions "$POP3_SESSIONS" --password pass "${USERS_SM[@]}")
step "POP3 login-heavy: Dovecot"
pop3_dc=$(median_json messages_per_s pop3j --server 127.0.0.1:10110 -c 8 --sessions "$POP3_SESSIONS" --password pass "${USERS_DC[@]}")

imap1() { $L imap -c 8 --password pass "$@" --json 2>/dev/null; }
imap() { median_json ops_per_s imap1 "$@"; }
# The auth cache runs before the IMAP mixes append mail, so it sees the same maildrops
# as the runs it is compared with; then the server restarts without it.
step "POP3 and IMAP login-heavy: shardmail with limits.auth_cache_secs=300 (restarted)"
restart() {
  stop_pid "$SM_PID"
  $B "${SM[@]}" "$@" serve 2>"$WORK/shardmail-$#.log" &
  SM_PID=$!
  wait_ready "$WORK/shardmail-$#.log"
}
restart --set limits.auth_cache_secs=300
cached_sm=$(median_json messages_per_s pop3j --server "$SM_POP3" -c 8 --sessions "$POP3_SESSIONS" --password pass "${USERS_SM[@]}")
il_cached=$(imap --server "$SM_IMAP" --sessions "$IMAP_SESSIONS" --ops 20 "${USERS_SM[@]}")
echo "$il_cached" > "$WORK/imap_cached.json"
restart

# IMAP on the same mailboxes. Read-only mixes first, so both servers hold the same
# mail for them; the mixed workload appends about as much to each.
step "IMAP FETCH whole messages: shardmail, Dovecot"
fb_sm=$(imap --server "$SM_IMAP" --sessions 16 --ops "$IMAP_OPS" --mix fetch_body=1 "${USERS_SM[@]}")
fb_dc=$(imap --server 127.0.0.1:10143 --sessions 16 --ops "$IMAP_OPS" --mix fetch_body=1 "${USERS_DC[@]}")
step "IMAP FETCH headers of 10 messages: shardmail, Dovecot"
fh_sm=$(imap --server "$SM_IMAP" --sessions 16 --ops "$IMAP_OPS" --mix fetch_headers=1 "${USERS_SM[@]}")
fh_dc=$(imap --server 127.0.0.1:10143 --sessions 16 --ops "$IMAP_OPS" --mix fetch_headers=1 "${USERS_DC[@]}")
NO_IDLE=fetch_headers=30,fetch_body=30,store=15,search=10,append=5,noop=10
step "IMAP mixed workload without IDLE, long sessions: shardmail, Dovecot"
mn_sm=$(imap --server "$SM_IMAP" --sessions 16 --ops "$IMAP_OPS" --mix "$NO_IDLE" "${USERS_SM[@]}")
mn_dc=$(imap --server 127.0.0.1:10143 --sessions 16 --ops "$IMAP_OPS" --mix "$NO_IDLE" "${USERS_DC[@]}")
step "IMAP mixed workload with IDLE wake-ups (the default mix), long sessions: shardmail, Dovecot"
mx_sm=$(imap --server "$SM_IMAP" --sessions 16 --ops "$IMAP_OPS" "${USERS_SM[@]}")
mx_dc=$(imap --server 127.0.0.1:10143 --sessions 16 --ops "$IMAP_OPS" "${USERS_DC[@]}")
step "IMAP login-heavy ($IMAP_SESSIONS sessions x 20 operations): shardmail, Dovecot"
il_sm=$(imap --server "$SM_IMAP" --sessions "$IMAP_SESSIONS" --ops 20 "${USERS_SM[@]}")
il_dc=$(imap --server 127.0.0.1:10143 --sessions "$IMAP_SESSIONS" --ops 20 "${USERS_DC[@]}")
echo "{\"fetch_body\": {\"shardmail\": $fb_sm, \"dovecot\": $fb_dc}, \"fetch_headers\": {\"shardmail\": $fh_sm, \"dovecot\": $fh_dc}, \"mixed_no_idle\": {\"shardmail\": $mn_sm, \"dovecot\": $mn_dc}, \"mixed\": {\"shardmail\": $mx_sm, \"dovecot\": $mx_dc}, \"login_heavy\": {\"shardmail\": $il_sm, \"dovecot\": $il_dc}}" > "$WORK/imap.json"

python3 - "$MESSAGES" "$t_sink" "$t_postfix" "$t_shardmail" "$pop3_sm" "$pop3_dc" "$OUT" "$retr_sm" "$retr_dc" "$cached_sm" "$WORK/imap.json" "$WORK/imap_cached.json" <<'PY'
import json, os, sys
n, t_sink, t_pf, t_sm = int(sys.argv[1]), *map(float, sys.argv[2:5])
sm, dc = json.loads(sys.argv[5]), json.loads(sys.argv[6])
rsm, rdc = json.loads(sys.argv[8]), json.loads(sys.argv[9])
csm = json.loads(sys.argv[10])
r = {
    "smtp_msgs_per_s": {"smtp-sink": n / t_sink, "postfix": n / t_pf, "shardmail": n / t_sm},
    "pop3_login_heavy": {"shardmail": sm, "dovecot": dc},
    "pop3_retrieval": {"shardmail": rsm, "dovecot": rdc},
    "pop3_login_heavy_auth_cache": {"shardmail": csm},
}
r["ratios"] = {
    "smtp_shardmail_vs_postfix": (n / t_sm) / (n / t_pf),
    "smtp_shardmail_vs_sink": (n / t_sm) / (n / t_sink),
    "pop3_msgs_shardmail_vs_dovecot": sm["messages_per_s"] / dc["messages_per_s"],
    "pop3_session_p99_ms": [sm["session_download_ms"]["p99"], dc["session_download_ms"]["p99"]],
}
imap = json.load(open(sys.argv[11]))
imap["login_heavy_auth_cache"] = {"shardmail": json.load(open(sys.argv[12]))}
r["imap"] = imap
r["ratios"]["imap_ops_shardmail_vs_dovecot"] = {
    k: v["shardmail"]["ops_per_s"] / v["dovecot"]["ops_per_s"] for k, v in imap.items() if "dovecot" in v}
json.dump(r, open(sys.argv[7], "w"), indent=2)
print(f"(median of {os.environ.get('RUNS', '1')} run(s) each)")
print(f"{'':34}{'msg/s':>10}")
for k, v in r["smtp_msgs_per_s"].items():
    print(f"SMTP ingest {k:22}{v:>10.0f}")
for mix, pairs in (("retrieval", (("shardmail", rsm), ("dovecot", rdc))),
                   ("login-heavy", (("shardmail", sm), ("shardmail+cache", csm), ("dovecot", dc)))):
    for name, x in pairs:
        print(f"POP3 {mix:12} {name:16}{x['messages_per_s']:>10.0f}   "
              f"(login {x['login_ms_mean']:.1f} ms; p99 download {x['session_download_ms']['p99']:.1f} ms)")
q = r["ratios"]
print(f"\nshardmail / Postfix (SMTP, smtp-source -d): {q['smtp_shardmail_vs_postfix']:.1f}x")
print(f"shardmail / smtp-sink (SMTP):              {100 * q['smtp_shardmail_vs_sink']:.0f}%")
print(f"shardmail / Dovecot (POP3 retrieval):      {rsm['messages_per_s'] / rdc['messages_per_s']:.1f}x")
print(f"shardmail / Dovecot (POP3 login-heavy):    {q['pop3_msgs_shardmail_vs_dovecot']:.1f}x"
      f"  ({csm['messages_per_s'] / dc['messages_per_s']:.1f}x with limits.auth_cache_secs=300)")
print("(the reference Dovecot stores {PLAIN} passwords; shardmail verifies argon2id on every login)")
print(f"\n{'IMAP (8 connections)':34}{'ops/s':>10}{'MB/s':>8}{'p99 ms':>9}")
for mix, v in imap.items():
    for name, x in v.items():
        print(f"  {mix:18} {name:13}{x['ops_per_s']:>10.0f}{x['mb_per_s']:>8.1f}{x['latency_ms']['p99']:>9.2f}")
for mix, ratio in r["ratios"]["imap_ops_shardmail_vs_dovecot"].items():
    print(f"shardmail / Dovecot (IMAP {mix}):{'':{max(1, 16 - len(mix))}}{ratio:.1f}x")
for name in ("shardmail", "dovecot"):
    idle = imap["mixed"][name]["per_operation"].get("idle")
    if idle:
        print(f"IDLE wake-up {name:10} p50 {idle['latency_ms']['p50']:.1f} ms  p99 {idle['latency_ms']['p99']:.1f} ms"
              "  (a second connection's APPEND sent → EXISTS seen)")
c = imap["login_heavy_auth_cache"]["shardmail"]["ops_per_s"] / imap["login_heavy"]["dovecot"]["ops_per_s"]
print(f"shardmail / Dovecot (IMAP login-heavy, limits.auth_cache_secs=300): {c:.1f}x")
print(f"\nresults written to {sys.argv[7]}")
PY
