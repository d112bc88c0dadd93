#!/usr/bin/env bash
# Installs a shardmail .deb for real (dpkg -i, as root, on a throwaway machine: CI),
# checks what it set up, runs the installed server as its user on loopback ports for
# one SMTP greeting, then removes and purges the package. Bounded: every wait has a
# timeout, and the server is stopped by its process id.
#
#   cargo deb && contrib/debian/smoke-test.sh target/debian/shardmail_*.deb
set -euo pipefail
deb=${1:?usage: smoke-test.sh PACKAGE.deb}
[ "$(id -u)" = 0 ] || { echo "smoke-test.sh: needs root (it installs the package)"; exit 1; }
fail() { echo "package smoke test FAILED: $*" >&2; exit 1; }

dpkg -i "$deb"
/usr/bin/shardmail --version
getent passwd shardmail >/dev/null || fail "no shardmail user"
[ "$(stat -c %U:%a /var/lib/shardmail)" = "shardmail:700" ] || fail "/var/lib/shardmail owner/mode"
[ "$(stat -c %G /etc/shardmail/shardmail.toml)" = shardmail ] || fail "config group"
[ -f /usr/lib/systemd/system/shardmail.service ] || fail "no systemd unit"
dpkg-query -W -f='${Conffiles}\n' shardmail | grep -q /etc/shardmail/shardmail.toml || fail "config is not a conffile"

# The shipped configuration runs, as the service would run it, on loopback ports.
ports=(); for _ in 1 2 3 4 5 6 7; do ports+=($(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')); done
log=$(mktemp)
setpriv --reuid shardmail --regid shardmail --init-groups \
  /usr/bin/shardmail --config /etc/shardmail/shardmail.toml --data-dir /var/lib/shardmail \
  --set "listen.smtp=\"127.0.0.1:${ports[0]}\"" --set "listen.submission=\"127.0.0.1:${ports[1]}\"" \
  --set "listen.submissions=\"127.0.0.1:${ports[2]}\"" --set "listen.imap=\"127.0.0.1:${ports[3]}\"" \
  --set "listen.imaps=\"127.0.0.1:${ports[4]}\"" --set "listen.pop3=\"127.0.0.1:${ports[5]}\"" \
  --set "listen.pop3s=\"127.0.0.1:${ports[6]}\"" --set server.shards=1 serve >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  grep -q "ready: every shard is listening" "$log" && break
  kill -0 "$pid" 2>/dev/null || { cat "$log"; fail "the installed server exited"; }
  sleep 0.1
done
grep -q "ready: every shard is listening" "$log" || { cat "$log"; kill "$pid"; fail "not ready in 10 s"; }
greeting=$(timeout 10 python3 -c "import socket,sys; s=socket.create_connection(('127.0.0.1',int(sys.argv[1])),5); print(s.recv(200).decode().strip())" "${ports[0]}")
case "$greeting" in 220*) echo "installed server answered: $greeting" ;; *) kill "$pid"; fail "greeting: $greeting" ;; esac
kill -TERM "$pid"
timeout 30 tail --pid="$pid" -f /dev/null || fail "server did not stop"
[ "$(stat -c %U /var/lib/shardmail/lock)" = shardmail ] || fail "data written as another user"

dpkg -r shardmail
[ ! -e /usr/bin/shardmail ] || fail "binary left after remove"
[ -f /etc/shardmail/shardmail.toml ] || fail "remove must keep the conffile"
dpkg -P shardmail
[ ! -e /etc/shardmail/shardmail.toml ] || fail "purge must remove the conffile"
[ -d /var/lib/shardmail ] || fail "purge must keep the mail"
rm -f "$log"
echo "package smoke test passed: $deb"
