#!/usr/bin/env bash
# The issue-12 figures: one mailbox growing to a million messages.
#
#   loadtest/volume.sh                       # ~6 minutes, ~3 GB of disk
#   CHECKPOINTS="10000 100000" loadtest/volume.sh
#
# Starts its own release server (temporary data directory, embedded defaults), then
# for each checkpoint delivers 2 KB messages over SMTP (`shardmail-load smtp -c 20`)
# until INBOX holds that many, and probes it with Python's imaplib and smtplib
# (loadtest/volume_probe.py): NOOP right after a delivery, STORE of one flag, SELECT,
# FETCH of the newest message (medians of 21), and the server's RSS. Finally the
# server is killed (-9) and restarted: time until it serves SELECT again. Every step
# is bounded; the server is stopped by its pid.
set -euo pipefail
cd "$(dirname "$0")/.."

CHECKPOINTS=${CHECKPOINTS:-"10000 100000 400000 1000000"}
BIN=target/release
cargo build --release --locked -q

DATA=$(mktemp -d /tmp/shardmail-volume-XXXXXX)
# shellcheck source=loadtest/lib.sh
. loadtest/lib.sh
trap 'stop_server; rm -rf "$DATA"' EXIT

SET=(--data-dir "$DATA")
RUN=0
start() {
  RUN=$((RUN + 1))
  LOG="$DATA/server.$RUN.log"
  start_server "$LOG" "${SET[@]}"
}

USER_ADDR=volume@localhost
echo pw | "$BIN/shardmail" "${SET[@]}" user add "$USER_ADDR" --password-stdin >/dev/null
start
HAVE=0
PROBE=(python3 loadtest/volume_probe.py --imaps 127.0.0.1:2993 --smtp 127.0.0.1:2525
       --user "$USER_ADDR" --password pw)
printf '%-10s %10s %28s %28s %28s %28s %8s\n' messages "ingest/s" \
  "NOOP after delivery ms" "STORE ms" "SELECT ms" "FETCH newest ms" "RSS MiB"
fmt() { python3 -c '
import json, sys
r = json.loads(sys.argv[1]); rate = sys.argv[2]
cell = lambda k: "%(median)7.2f (%(min)6.2f-%(max)7.2f)" % r["ms"][k]
print("%-10s %10s %28s %28s %28s %28s %8.0f" % (r["messages"], rate, cell("noop_after_delivery"),
      cell("store"), cell("select"), cell("fetch_newest"), r["rss_mib"]))' "$1" "$2"; }
for target in $CHECKPOINTS; do
  batch=$((target - HAVE))
  rate=-
  if [ "$batch" -gt 0 ]; then
    rate=$("$BIN/shardmail-load" smtp --server 127.0.0.1:2525 -c 20 -m "$batch" -s 2048 \
             --to "$USER_ADDR" --duration-secs 900 --json |
           python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.0f" % r["messages_per_s"]) if r["errors"]==0 else print("errors:%d" % r["errors"])')
    HAVE=$target
  fi
  fmt "$("${PROBE[@]}" --pid "$SERVER_PID")" "$rate"
  HAVE=$((HAVE + 21))
done

echo "== restart after kill -9"
kill -KILL "$SERVER_PID"
wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=
t0=$(date +%s.%N)
start
python3 - <<'EOF'
import imaplib, ssl
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = imaplib.IMAP4_SSL("127.0.0.1", 2993, ssl_context=ctx, timeout=60)
s.login("volume@localhost", "pw"); print("INBOX after restart:", s.select("INBOX")[1][0].decode()); s.logout()
EOF
t1=$(date +%s.%N)
python3 -c "print('restart to first SELECT: %.2f s' % ($t1 - $t0))"
grep -o "replayed[^\"]*" "$LOG" | head -3 || true
