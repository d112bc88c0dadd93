#!/usr/bin/env bash
# The cost of a milter, side by side with Postfix in one run: the same libmilter
# filter (tests/e2e/milter_daemon.py on python3-milter, accepting everything) behind
# shardmail and behind Debian's Postfix (../shared/reference/start-postfix.sh, with
# INFLOW=0), each with and without it. ROUNDS rounds of shardmail-load smtp
# (MESSAGES x 5 KiB, 20 connections) per variant.
#
# Server CPU per message: shardmail's from /proc/PID/stat; Postfix's from its master
# (its own time and its reaped children's) plus its live daemons, read after the
# queue has drained, so delivery into the Maildir counts too. The milter's own CPU
# is in neither. Loopback only; what this script starts is stopped by its pid
# (Postfix by `postfix stop`, as its script says).
#
#   cargo build --release && sudo INFLOW=0 ../shared/reference/start-postfix.sh &&
#   loadtest/milter_compare.sh
set -u
cd "$(dirname "$0")/.."
B=target/release/shardmail
L=target/release/shardmail-load
ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-4000}
PORT=${PORT:-13528}
PF_ROOT=${PF_ROOT:-/tmp/postfix-ref}
tick=$(getconf CLK_TCK)
work=$(mktemp -d /tmp/shardmail-milter-compare.XXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done; rm -rf "$work"; }
trap cleanup EXIT

[ -f /var/spool/postfix/pid/master.pid ] || { echo "start Postfix first (see the header)" >&2; exit 1; }
mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
/usr/bin/python3 tests/e2e/milter_daemon.py "$mport" "$work/record" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$mport") 2>/dev/null && break; sleep 0.1; done

postfix_ticks() {
  local m t p
  m=$(tr -d ' ' </var/spool/postfix/pid/master.pid)
  t=$(awk '{print $14+$15+$16+$17}' "/proc/$m/stat")
  for p in $(pgrep -P "$m"); do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
  echo "$t"
}
postfix_drained() {
  for _ in $(seq 1 600); do
    [ -z "$(find /var/spool/postfix/incoming /var/spool/postfix/active -type f 2>/dev/null | head -1)" ] && return 0
    sleep 0.1
  done
}
load() { $L smtp --server "$1" -c 20 -m "$MESSAGES" --duration-secs 120 --to sink@bench.test --size 5120 2>&1 |
  awk '/throughput/{t=$2} /messages ok/{ok=$3; err=$5} END{print t, ok, err}'; }

for round in $(seq 1 "$ROUNDS"); do
  for variant in postfix postfix+milter shardmail shardmail+milter; do
    case $variant in
      postfix*)
        if [ "$variant" = postfix+milter ]; then
          postconf -e "smtpd_milters = inet:127.0.0.1:$mport" "milter_default_action = tempfail" >/dev/null
        else
          postconf -e "smtpd_milters =" >/dev/null
        fi
        postfix reload >/dev/null 2>&1; sleep 2
        rm -rf "$PF_ROOT/vmail/sink"
        t0=$(postfix_ticks)
        read -r rate ok err < <(load 127.0.0.1:10025)
        postfix_drained
        t1=$(postfix_ticks)
        ;;
      shardmail*)
        d=$(mktemp -d "$work/server.XXXX")
        S=(--data-dir "$d" --set 'domains.local=["bench.test"]' --set auth.enabled=false --set server.shards=2
           --set "listen.smtp=\"127.0.0.1:$PORT\"" --set 'listen.submission=[]' --set 'listen.submissions=[]'
           --set 'listen.imap=[]' --set 'listen.imaps=[]' --set 'listen.pop3=[]' --set 'listen.pop3s=[]'
           --set 'log.level="warn"')
        [ "$variant" = shardmail+milter ] && S+=(--set "milter.servers=[{address=\"inet:127.0.0.1:$mport\"}]")
        echo pw | $B "${S[@]}" user add sink@bench.test --password-stdin >/dev/null 2>&1
        $B "${S[@]}" serve 2>"$d/log" &
        pid=$!
        for _ in $(seq 1 100); do grep -q "ready: every shard" "$d/log" 2>/dev/null && break; sleep 0.1; done
        t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
        read -r rate ok err < <(load "127.0.0.1:$PORT")
        t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
        kill -TERM "$pid"; wait "$pid" 2>/dev/null
        rm -rf "$d"
        ;;
    esac
    us=$(( (t1 - t0) * 1000000 / tick / (ok > 0 ? ok : 1) ))
    echo "round=$round variant=$variant ok=$ok errors=$err server_cpu_per_msg_us=$us msg_per_s=$rate"
  done
done
postconf -e "smtpd_milters =" >/dev/null; postfix reload >/dev/null 2>&1
