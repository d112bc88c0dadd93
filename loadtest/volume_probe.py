#!/usr/bin/env python3
"""One probe of a large mailbox with Python's own IMAP and SMTP clients (issue 12).

Times, ROUNDS times each, on an IMAPS session that has INBOX selected:
  noop_after_delivery  a message is delivered over SMTP (until its 250), then NOOP
                       (which reports the new EXISTS)
  store                STORE +FLAGS / -FLAGS (\\Flagged) on one message in the middle
  select               SELECT INBOX on a second session
  fetch_newest         FETCH * (BODY.PEEK[])
and reads the server's RSS from /proc/PID/status. Prints one JSON line: median, min
and max in milliseconds per operation, the message count and RSS in MiB.
"""

import argparse
import imaplib
import json
import smtplib
import ssl
import statistics
import time


def hostport(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def timed(samples, name, fn):
    start = time.perf_counter()
    result = fn()
    samples.setdefault(name, []).append((time.perf_counter() - start) * 1000)
    return result


def check(response, what):
    typ, data = response
    if typ != "OK":
        raise SystemExit(f"{what}: {typ} {data!r}")
    return data


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--imaps", required=True)
    p.add_argument("--smtp", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", default="pw")
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--rounds", type=int, default=21)
    a = p.parse_args()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    host, port = hostport(a.imaps)
    sessions = []
    for _ in range(2):
        s = imaplib.IMAP4_SSL(host, port, ssl_context=ctx, timeout=60)
        check(s.login(a.user, a.password), "LOGIN")
        sessions.append(s)
    probe, other = sessions
    count = int(check(probe.select("INBOX"), "SELECT")[0])
    smtp_host, smtp_port = hostport(a.smtp)
    smtp = smtplib.SMTP(smtp_host, smtp_port, timeout=60)
    samples = {}
    middle = str(max(1, count // 2))
    for i in range(a.rounds):
        smtp.sendmail(
            "probe@loadtest.invalid",
            [a.user],
            f"From: probe@loadtest.invalid\r\nTo: {a.user}\r\nSubject: probe {i}\r\n\r\nprobe\r\n",
        )
        timed(samples, "noop_after_delivery", lambda: check(probe.noop(), "NOOP"))
        sign = "+" if i % 2 == 0 else "-"
        timed(
            samples,
            "store",
            lambda: check(probe.store(middle, f"{sign}FLAGS", "(\\Flagged)"), "STORE"),
        )
        count = int(timed(samples, "select", lambda: check(other.select("INBOX"), "SELECT"))[0])
        timed(
            samples,
            "fetch_newest",
            lambda: check(probe.fetch("*", "(BODY.PEEK[])"), "FETCH"),
        )
    smtp.quit()
    for s in sessions:
        s.logout()
    report = {
        "messages": count,
        "rss_mib": rss_mib(a.pid),
        "ms": {
            name: {
                "median": round(statistics.median(v), 2),
                "min": round(min(v), 2),
                "max": round(max(v), 2),
            }
            for name, v in samples.items()
        },
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
