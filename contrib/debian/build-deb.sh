#!/usr/bin/env bash
# Builds a Debian package of shardmail from a built binary, with dpkg-deb only (no
# cargo-deb, no debhelper: what any Debian or Ubuntu host has).
#
#   cargo build --release && contrib/debian/build-deb.sh target/release/shardmail OUTDIR
#
# The package installs /usr/bin/shardmail, the systemd unit, /etc/shardmail/shardmail.toml
# (tuning/default.toml; a conffile, kept on upgrade), the fail2ban filter, and the docs;
# it creates the `shardmail` system user and /var/lib/shardmail on install. It does not
# start the server: set domains.local in /etc/shardmail/shardmail.toml first, then
# `systemctl enable --now shardmail`. Prints the path of the .deb it wrote. FAST=1
# compresses quickly (gzip -1) instead of with xz.
set -euo pipefail
bin=${1:?usage: build-deb.sh BINARY OUTDIR}
out=${2:?usage: build-deb.sh BINARY OUTDIR}
root=$(cd "$(dirname "$0")/../.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg="$stage/shardmail_${version}_${arch}"

install -D -m 755 "$bin" "$pkg/usr/bin/shardmail"
install -D -m 644 "$root/contrib/systemd/shardmail.service" "$pkg/usr/lib/systemd/system/shardmail.service"
install -D -m 640 "$root/tuning/default.toml" "$pkg/etc/shardmail/shardmail.toml"
install -D -m 644 "$root/contrib/fail2ban/filter.d/shardmail.conf" "$pkg/etc/fail2ban/filter.d/shardmail.conf"
doc="$pkg/usr/share/doc/shardmail"
install -D -m 644 "$root/contrib/fail2ban/jail.d/shardmail.conf" "$doc/examples/fail2ban-jail.conf"
for f in README.md docs/config.md docs/logging.md docs/format.md; do
  [ -f "$root/$f" ] && install -D -m 644 "$root/$f" "$doc/$(basename "$f")"
done
for f in "$root"/tuning/*.toml "$root/tuning/sysctl.conf"; do
  install -D -m 644 "$f" "$doc/examples/tuning/$(basename "$f")"
done

mkdir -p "$pkg/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat > "$pkg/DEBIAN/control" <<CONTROL
Package: shardmail
Version: $version
Architecture: $arch
Maintainer: shardmail developers <postmaster@localhost>
Installed-Size: $size
Depends: libc6, passwd
Recommends: systemd
Suggests: fail2ban
Provides: mail-transport-agent, imap-server, pop3-server
Section: mail
Priority: optional
Homepage: https://github.com/shardmail/shardmail
Description: shard-per-core mail server (SMTP, IMAP, POP3)
 One process speaks SMTP (inbound MX, submission, outbound relay), IMAP and
 POP3, with one executor per core, a memory-mapped mailstore, SPF, DKIM,
 DMARC and ARC checks, DKIM signing and an outbound queue.
CONTROL
cat > "$pkg/DEBIAN/conffiles" <<CONFFILES
/etc/shardmail/shardmail.toml
/etc/fail2ban/filter.d/shardmail.conf
CONFFILES
cat > "$pkg/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if ! getent passwd shardmail >/dev/null; then
    useradd --system --home-dir /var/lib/shardmail --no-create-home \
      --shell /usr/sbin/nologin --user-group shardmail
  fi
  install -d -m 700 -o shardmail -g shardmail /var/lib/shardmail
  chgrp shardmail /etc/shardmail/shardmail.toml
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    # An upgrade restarts a running server (nothing acknowledged is lost by that).
    if systemctl is-active --quiet shardmail; then systemctl restart shardmail || true; fi
  fi
fi
exit 0
POSTINST
cat > "$pkg/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl stop shardmail || true
  systemctl disable shardmail >/dev/null 2>&1 || true
fi
exit 0
PRERM
cat > "$pkg/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
# The mail in /var/lib/shardmail is never removed by the package, not even on purge.
exit 0
POSTRM
chmod 755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/prerm" "$pkg/DEBIAN/postrm"
mkdir -p "$out"
deb="$out/shardmail_${version}_${arch}.deb"
# xz by default (what Debian ships); FAST=1 for tests, which package a debug binary.
if [ "${FAST:-0}" = 1 ]; then compress=(-Zgzip -z1); else compress=(); fi
dpkg-deb --root-owner-group "${compress[@]}" --build "$pkg" "$deb" >/dev/null
echo "$deb"
