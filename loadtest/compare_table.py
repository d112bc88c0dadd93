#!/usr/bin/env python3
"""The README's comparison table from what loadtest/compare.sh wrote (compare.json).

    loadtest/compare_table.py compare.json > table.md

Rates are the medians compare.sh kept; "CPU" is the server's own CPU per operation
(POP3: per message retrieved; IMAP: per operation, logins excluded from the count).
Ratios compare like with like: argon2id on both sides, cached with cached, uncached
with uncached; the {PLAIN} column shows what Dovecot does with plaintext passwords.
"""

import json
import sys

PROFILES = [
    ("shardmail", "shardmail"),
    ("shardmail-nocache", "shardmail, no login cache"),
    ("dovecot-plain", "Dovecot {PLAIN}"),
    ("dovecot-argon2id", "Dovecot argon2id"),
    ("dovecot-argon2id-cache", "Dovecot argon2id + auth cache"),
]
NAMES = {
    "pop3_retrieval": "POP3 retrieval (8 × login, RETR 300 × 10 KiB), msg/s",
    "pop3s_retrieval": "POP3S retrieval, msg/s",
    "pop3_login_heavy": "POP3 login-heavy (256 sessions), msg/s",
    "imap_fetch_body": "IMAP FETCH whole message, ops/s",
    "imaps_fetch_body": "IMAPS FETCH whole message, ops/s",
    "imap_fetch_headers": "IMAP FETCH 10 messages' headers, ops/s",
    "imap_mixed_no_idle": "IMAP mixed, no IDLE, ops/s",
    "imap_mixed": "IMAP mixed with IDLE, ops/s",
    "imap_login_heavy": "IMAP login-heavy (400 sessions × 20 ops), ops/s",
}


def rate(r):
    return r.get("messages_per_s") or r.get("ops_per_s") or 0.0


def p99(r):
    return (r.get("latency_ms") or r.get("session_download_ms") or {}).get("p99", 0.0)


def cell(r):
    if r is None:
        return "—"
    return f"{rate(r):,.0f}<br>p99 {p99(r):.1f} ms<br>{r['server_cpu_us_per_op']:,.0f} µs CPU"


def main(path):
    result = json.load(open(path))
    smtp = result["smtp_msgs_per_s"]
    q = result["smtp_ratios"]
    print("| SMTP ingest, `smtp-source -4 -s 20 -l 5120 -d`, msg/s | shardmail | Postfix "
          "(queue fsync) | smtp-sink (stores nothing) | ratio |")
    print("|---|---|---|---|---|")
    print(f"| durable 5 KiB messages | {smtp['shardmail']:,.0f} | {smtp['postfix']:,.0f} | "
          f"{smtp['smtp-sink']:,.0f} | {q['shardmail_vs_postfix']:.1f}× Postfix, "
          f"{100 * q['shardmail_vs_sink']:.0f}% of smtp-sink |")
    print()
    print("| workload | " + " | ".join(label for _, label in PROFILES) +
          " | argon2id both, cached | argon2id both, uncached | uncached vs {PLAIN} |")
    print("|---" * (len(PROFILES) + 4) + "|")
    for workload, by in result["mailbox"].items():
        ratios = result["ratios"].get(workload, {})
        shown = [f"{ratios[k]:.1f}×" if k in ratios else "—" for k in (
            "argon2id_both_cached", "argon2id_both_uncached", "shardmail_uncached_vs_dovecot_plain")]
        print(f"| {NAMES.get(workload, workload)} | " +
              " | ".join(cell(by.get(key)) for key, _ in PROFILES) + " | " + " | ".join(shown) + " |")
    print(f"\n(medians of {result['runs']} runs each)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "compare.json")
