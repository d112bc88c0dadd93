#!/usr/bin/env bash
# What the antispam checks cost on the SMTP hot path: the same release binary, 2
# shards, ROUNDS rounds of shardmail-load smtp (5 KiB messages, 20 connections),
# alternating these profiles:
#
#   none    loopback exempt (the defaults): no antispam check runs
#   screen  every check on for the loopback client (antispam.exempt_networks=[]): the
#           rate limits (raised past the load), two DNS lists and FCrDNS at connect
#           (dnsmasq on loopback), the HELO check, the sender-domain list after DATA
#   milter  screen + a libmilter filter that accepts everything (tests/e2e/
#           milter_daemon.py on python3-milter): one conversation per message
#   rspamd  screen + Debian's rspamd through its milter proxy (scans every message)
#
# Prints server CPU per message (shardmail's own, from /proc/PID/stat: the milter and
# rspamd's CPU are not in it) and the load tool's throughput. Loopback only; every
# process started is stopped by its pid.
#
#   cargo build --release && loadtest/antispam_cost.sh
set -u
cd "$(dirname "$0")/.."
B=target/release/shardmail
L=target/release/shardmail-load
ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-20000}
MILTER_MESSAGES=${MILTER_MESSAGES:-4000}
PROFILES=${PROFILES:-none screen milter rspamd}
PORT=${PORT:-13526}
tick=$(getconf CLK_TCK)
work=$(mktemp -d /tmp/shardmail-antispam-cost.XXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 1200); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

dns_port=$(free_port)
/usr/sbin/dnsmasq --keep-in-foreground --no-daemon --conf-file=/dev/null --port="$dns_port" \
  --listen-address=127.0.0.1 --bind-interfaces --no-resolv --no-hosts --local=/test/ \
  --local=/in-addr.arpa/ --pid-file= --user=root 2>/dev/null &
pids+=($!)

milter_port=$(free_port)
if [[ " $PROFILES " == *" milter "* ]]; then
  /usr/bin/python3 tests/e2e/milter_daemon.py "$milter_port" "$work/milter.record" >/dev/null 2>&1 &
  pids+=($!)
  wait_port "$milter_port" || { echo "the test milter did not start" >&2; exit 1; }
fi

rspamd_port=$(free_port)
if [[ " $PROFILES " == *" rspamd "* ]]; then
  r="$work/rspamd"; mkdir -p "$r/local.d" "$r/db" "$r/run" "$r/log"
  printf 'bind_socket = "127.0.0.1:%s";\nmilter = yes;\ntimeout = 60s;\ncount = 1;\nupstream "local" { default = yes; self_scan = yes; }\n' "$rspamd_port" >"$r/local.d/worker-proxy.inc"
  echo 'enabled = false;' >"$r/local.d/worker-normal.inc"
  echo 'enabled = false;' >"$r/local.d/worker-fuzzy.inc"
  printf 'bind_socket = "127.0.0.1:%s";\n' "$(free_port)" >"$r/local.d/worker-controller.inc"
  printf 'dns { nameserver = ["127.0.0.1:%s"]; timeout = 0.3s; retransmits = 1; }\n' "$dns_port" >"$r/local.d/options.inc"
  printf 'type = "file";\nfilename = "%s/log/rspamd.log";\nlevel = "warning";\n' "$r" >"$r/local.d/logging.inc"
  rspamd -f -i -c /etc/rspamd/rspamd.conf --var="LOCAL_CONFDIR=$r" --var="DBDIR=$r/db" \
    --var="RUNDIR=$r/run" --var="LOGDIR=$r/log" >/dev/null 2>&1 &
  pids+=($!)
  wait_port "$rspamd_port" || { echo "rspamd did not start" >&2; exit 1; }
  # Its helpers compile regular expressions for a while after the port opens: wait
  # until the rspamd processes are idle, so they do not eat the other profiles' CPU.
  rspamd_ticks() { local t=0 p; for p in $(pgrep -P "$1") "$1"; do
    t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo "$t"; }
  for _ in $(seq 1 120); do
    a=$(rspamd_ticks "${pids[-1]}"); sleep 1; b=$(rspamd_ticks "${pids[-1]}")
    [ $((b - a)) -lt 5 ] && break
  done
fi

for round in $(seq 1 "$ROUNDS"); do
  for profile in $PROFILES; do
    d=$(mktemp -d "$work/server.XXXX")
    S=(--data-dir "$d" --set 'domains.local=["bench.test"]' --set auth.enabled=false --set server.shards=2
       --set "listen.smtp=\"127.0.0.1:$PORT\"" --set 'listen.submission=[]' --set 'listen.submissions=[]'
       --set 'listen.imap=[]' --set 'listen.imaps=[]' --set 'listen.pop3=[]' --set 'listen.pop3s=[]'
       --set 'log.level="warn"' --set "dns.servers=[\"127.0.0.1:$dns_port\"]")
    n=$MESSAGES
    case $profile in
      none) ;;
      *)
        S+=(--set 'antispam.exempt_networks=[]'
            --set 'antispam.rate_limits=[{key="client_ip",count="messages",window="1m",limit=100000000},{key="client_ip",count="recipients",window="1m",limit=100000000},{key="client_ip",count="connections",window="1m",limit=100000000}]'
            --set 'antispam.dnsbl=[{zone="zen.test",weight=10},{zone="allow.test",weight=-5},{zone="dbl.test",weight=10,lookup="sender_domain"}]'
            --set antispam.fcrdns_fail_score=1)
        ;;&
      milter) S+=(--set "milter.servers=[{address=\"inet:127.0.0.1:$milter_port\"}]"); n=$MILTER_MESSAGES ;;
      rspamd) S+=(--set "milter.servers=[{address=\"inet:127.0.0.1:$rspamd_port\"}]"); n=$MILTER_MESSAGES ;;
    esac
    echo pw | $B "${S[@]}" user add sink@bench.test --password-stdin >/dev/null 2>&1
    $B "${S[@]}" serve 2>"$d/log" &
    pid=$!
    for _ in $(seq 1 100); do grep -q "ready: every shard" "$d/log" 2>/dev/null && break; sleep 0.1; done
    t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
    out=$($L smtp --server "127.0.0.1:$PORT" -c 20 -m "$n" --duration-secs 120 --to sink@bench.test \
           --size 5120 2>&1)
    t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
    rate=$(echo "$out" | awk '/throughput/{print $2}')
    sent=$(echo "$out" | awk '/^sent|messages sent|ok:/{print $2; exit}')
    kill -TERM "$pid"; wait "$pid" 2>/dev/null
    us=$(( (t1 - t0) * 1000000 / tick / n ))
    echo "round=$round profile=$profile messages=$n server_cpu_per_msg_us=$us msg_per_s=$rate"
    rm -rf "$d"
  done
done
