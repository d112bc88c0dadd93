#!/usr/bin/env bash
# Reclaiming and moving mail at volume (issue 12): deliver MESSAGES messages of 2 KB
# to one account, expunge half of them over IMAP, stop the server, then time
# `store stats`, `store compact`, `export` and `import --maildir` into a second
# account, printing disk use before and after.
#
#   loadtest/compact.sh                 # ~2 minutes with MESSAGES=200000
#
# Starts its own release server on a temporary data directory (embedded defaults);
# every step is bounded; the server is stopped by its pid.
set -euo pipefail
cd "$(dirname "$0")/.."

MESSAGES=${MESSAGES:-200000}
BIN=target/release
cargo build --release --locked -q

DATA=$(mktemp -d /tmp/shardmail-compact-XXXXXX)
# shellcheck source=loadtest/lib.sh
. loadtest/lib.sh
trap 'stop_server; rm -rf "$DATA"' EXIT
SET=(--data-dir "$DATA")
start_server "$DATA/server.log" "${SET[@]}"
for u in alice copy; do
  echo pw | "$BIN/shardmail" "${SET[@]}" user add "$u@localhost" --password-stdin >/dev/null
done
sleep 1.2 # the server re-reads users.json at most once a second
echo "== delivering $MESSAGES messages"
"$BIN/shardmail-load" smtp --server 127.0.0.1:2525 -c 20 -m "$MESSAGES" -s 2048 \
  --to alice@localhost --duration-secs 600 2>/dev/null | grep throughput
echo "== expunging half over IMAP"
python3 - "$MESSAGES" <<'EOF'
import imaplib, ssl, sys, time
n = int(sys.argv[1])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
c = imaplib.IMAP4_SSL("127.0.0.1", 2993, ssl_context=ctx, timeout=600)
c.login("alice@localhost", "pw"); c.select("INBOX")
t = time.perf_counter(); c.store(f"1:{n // 2}", "+FLAGS.SILENT", "(\\Deleted)")
t1 = time.perf_counter(); c.expunge(); t2 = time.perf_counter()
print(f"STORE of {n // 2}: {t1 - t:.2f} s, EXPUNGE: {t2 - t1:.2f} s")
c.logout()
EOF
stop_server
du_logs() { du -sb "$DATA/partitions" | cut -f1; }
echo "== before: $(du_logs) bytes in partitions/"
time "$BIN/shardmail" "${SET[@]}" store stats | tail -1
time "$BIN/shardmail" "${SET[@]}" store compact 2>/dev/null | tail -1
echo "== after: $(du_logs) bytes in partitions/"
"$BIN/shardmail" "${SET[@]}" store stats | tail -1
time "$BIN/shardmail" "${SET[@]}" export alice@localhost --out "$DATA/export" | tail -1
time "$BIN/shardmail" "${SET[@]}" import copy@localhost --maildir "$DATA/export" 2>/dev/null
