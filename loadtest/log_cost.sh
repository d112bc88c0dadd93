#!/usr/bin/env bash
# What the delivery log costs on the SMTP hot path: the same release binary with
# log.level "info" (one shardmail::delivery line per recipient) and "warn" (none),
# alternating, ROUNDS rounds of shardmail-load smtp (MESSAGES x 5 KiB, 20 connections,
# 2 shards). Prints server CPU per message from /proc/PID/stat and the load tool's
# throughput. Loopback only; every server is stopped by its pid.
#
#   cargo build --release && loadtest/log_cost.sh
set -u
cd "$(dirname "$0")/.."
B=target/release/shardmail
L=target/release/shardmail-load
ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-20000}
PORT=${PORT:-13525}
tick=$(getconf CLK_TCK)
for round in $(seq 1 "$ROUNDS"); do
  for level in info warn; do
    d=$(mktemp -d /tmp/shardmail-logcost.XXXX)
    S=(--data-dir "$d" --set 'domains.local=["bench.test"]' --set auth.enabled=false --set server.shards=2
       --set "listen.smtp=\"127.0.0.1:$PORT\"" --set 'listen.submission=[]' --set 'listen.submissions=[]'
       --set 'listen.imap=[]' --set 'listen.imaps=[]' --set 'listen.pop3=[]' --set 'listen.pop3s=[]'
       --set "log.level=\"$level\"")
    echo pw | $B "${S[@]}" user add sink@bench.test --password-stdin >/dev/null 2>&1
    $B "${S[@]}" serve 2>"$d/log" &
    pid=$!
    for _ in $(seq 1 100); do grep -q "ready: every shard" "$d/log" 2>/dev/null && break; sleep 0.1; done
    t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
    rate=$($L smtp --server "127.0.0.1:$PORT" -c 20 -m "$MESSAGES" --duration-secs 60 --to sink@bench.test \
           --size 5120 2>&1 | awk '/throughput/{print $2}')
    t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
    lines=$(grep -c "shardmail::delivery" "$d/log")
    kill -TERM "$pid"; wait "$pid" 2>/dev/null
    us=$(( (t1 - t0) * 1000000 / tick / MESSAGES ))
    echo "round=$round log.level=$level delivery_lines=$lines server_cpu_per_msg_us=$us msg_per_s=$rate"
    rm -rf "$d"
  done
done
