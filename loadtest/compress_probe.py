#!/usr/bin/env python3
"""What IMAP COMPRESS=DEFLATE costs the server (issue 13), against a server this script
starts on loopback (the e2e harness; SHARDMAIL_BIN picks the binary, debug by default):

  cpu      200 messages of 20 KB of random words (a 3,000-word vocabulary), FETCH 1:*
           BODY.PEEK[] five times over IMAPS, plain then deflated: server CPU per MB
           sent (from /proc/PID/stat) and the bytes on the wire
  memory   100 IMAPS sessions logged in, plain, then 100 more with COMPRESS on: the
           server's RSS growth per session (from /proc/PID/status)

Usage: SHARDMAIL_BIN=target/release/shardmail python3 loadtest/compress_probe.py
Prints one JSON line. Stops the server it started by its process id.
"""

import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "e2e"))
from harness import DOMAIN, Server, tls_context  # noqa: E402
from test_imap_rfc import DeflateIMAP  # noqa: E402

USER = f"probe@{DOMAIN}"


def session(server, compress):
    m = DeflateIMAP("127.0.0.1", server.ports["imaps"], ssl_context=tls_context(), timeout=60)
    m.login(USER, "pw")
    if compress:
        m.compress()
    return m


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().split(") ")[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return 0


def main():
    server = Server(settings={"limits.sessions_per_user_max": "1000"})
    server.add_user(USER, "pw")
    server.start()
    result = {}
    try:
        rng = random.Random(7)
        words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
                 for _ in range(3000)]
        for i in range(200):
            text = "".join(" ".join(rng.choice(words) for _ in range(12)) + "\r\n" for _ in range(270))
            server.send("a@remote.example", [USER], f"Subject: probe {i}\r\n\r\n{text}".encode())
        pid = server.proc.pid
        for mode in ("plain", "deflate"):
            m = session(server, mode == "deflate")
            m.select("INBOX")
            before, total = cpu_seconds(pid), 0
            for _ in range(5):
                typ, data = m.fetch("1:*", "(BODY.PEEK[])")
                total += sum(len(d[1]) for d in data if isinstance(d, tuple))
            used = cpu_seconds(pid) - before
            result[mode] = {"mb_fetched": round(total / 1e6, 1),
                            "server_cpu_ms_per_mb": round(used * 1e3 / (total / 1e6), 1)}
            if mode == "deflate":
                result[mode]["wire_ratio"] = round(m.compressed_in / total, 3)
            m.logout()
        for mode in ("plain", "deflate"):
            base = rss_kib(pid)
            sessions = [session(server, mode == "deflate") for _ in range(100)]
            time.sleep(1)
            result[mode]["rss_kib_per_session"] = round((rss_kib(pid) - base) / 100, 1)
            for m in sessions:
                m.logout()
            time.sleep(1)
    finally:
        server.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
