#!/usr/bin/env bash
# The issue-11 figures: what hostile clients cost a release shardmail on loopback.
#
#   loadtest/abuse.sh            # ~5 minutes on a 2-core host; needs python3-free shell only
#
# Starts its own server (temporary data directory, embedded default ports, default
# profile), seeds MESSAGES messages of 2 KB into one account, creates 10,000
# mailboxes, then runs `shardmail-load abuse`: bystander NOOP / SMTP greeting latency
# during a pathological LIST, LIST of 10,000 mailboxes, SEARCH TEXT and FETCH 1:*;
# server memory per idle connection (10,000 per protocol); server memory under 200
# unfinished 45 MiB uploads. Every step is bounded; the server is stopped by its pid.
set -euo pipefail
cd "$(dirname "$0")/.."

MESSAGES=${MESSAGES:-100000}
IDLE=${IDLE:-10000}
UPLOADS=${UPLOADS:-200}
UPLOAD_MIB=${UPLOAD_MIB:-45}
BIN=target/release
cargo build --release --locked -q

# 10,000 client sockets here plus as many in the server (and its reserve).
ulimit -Hn 200000 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"

DATA=$(mktemp -d /tmp/shardmail-abuse-XXXXXX)
# shellcheck source=loadtest/lib.sh
. loadtest/lib.sh
trap 'stop_server; rm -rf "$DATA"' EXIT

SET=(--data-dir "$DATA" --set limits.mailboxes_per_account_max=20000
     --set limits.connections_per_ip_max=100000 --set limits.sessions_per_user_max=1000)
RUN=0
start() {
  RUN=$((RUN + 1))
  LOG="$DATA/server.$RUN.log"
  start_server "$LOG" "${SET[@]}"
}

echo pw | "$BIN/shardmail" "${SET[@]}" user add alice@localhost --password-stdin >/dev/null
start
echo "== seeding $MESSAGES messages"
"$BIN/shardmail-load" smtp --server 127.0.0.1:2525 -c 20 -m "$MESSAGES" -s 2048 --to alice@localhost | tail -3
LOAD=("$BIN/shardmail-load" abuse)
ACCOUNT=(--user alice@localhost --password pw)
"${LOAD[@]}" mailboxes --imaps 127.0.0.1:2993 "${ACCOUNT[@]}" --count 10000

for attack in list-pattern list-all search fetch; do
  echo "== stall: $attack"
  "${LOAD[@]}" stall --imaps 127.0.0.1:2993 --smtp 127.0.0.1:2525 "${ACCOUNT[@]}" --attack "$attack" --probes 200
done

stop_server
MAIL_DATA=$DATA
for spec in 2525:plain 2143:plain 2110:plain 2465:tls 2993:tls 2995:tls; do
  port=${spec%:*}
  # A fresh process on an empty data directory per protocol: memory freed by an
  # earlier round (or by loading a large index) would be reused and hide the cost.
  DATA=$(mktemp -d /tmp/shardmail-abuse-idle-XXXXXX)
  SET=(--data-dir "$DATA" --set limits.connections_per_ip_max=100000 --set limits.sessions_per_user_max=1000)
  start
  echo "== idle connections on $spec"
  TLS=(); [ "${spec#*:}" = tls ] && TLS=(--tls)
  "${LOAD[@]}" idle --server "127.0.0.1:$port" --pid "$SERVER_PID" --connections "$IDLE" "${TLS[@]}"
  stop_server
  rm -rf "$DATA"
done
DATA=$MAIL_DATA
SET=(--data-dir "$DATA" --set limits.mailboxes_per_account_max=20000
     --set limits.connections_per_ip_max=100000 --set limits.sessions_per_user_max=1000)

start
echo "== unfinished uploads"
"${LOAD[@]}" uploads --smtp 127.0.0.1:2525 --imaps 127.0.0.1:2993 "${ACCOUNT[@]}" \
  --pid "$SERVER_PID" --connections "$UPLOADS" --megabytes "$UPLOAD_MIB"
stop_server
