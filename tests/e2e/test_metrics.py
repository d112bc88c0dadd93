"""The Prometheus endpoint (listen.metrics) against the real server: counters from
every shard are merged in one scrape, and they match what the test did."""
import imaplib
import json
import os
import re
import smtplib
import socket
import time
import urllib.error
import urllib.request
import unittest

from harness import DOMAIN, Server, free_port


def scrape(port, path="/metrics"):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.headers.get("Content-Type"), r.read().decode()


def value(text, name):
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} missing from:\n{text}"
    return float(m.group(1))


class Metrics(unittest.TestCase):
    def test_scrape_merges_shards(self):
        port = free_port()
        server = Server(shards=2, settings={"listen.metrics": f'"127.0.0.1:{port}"'})
        server.add_user(f"m@{DOMAIN}")
        server.start()
        try:
            _, before = scrape(port)
            self.assertEqual(value(before, "shardmail_shards"), 2)
            self.assertEqual(value(before, "shardmail_messages_accepted_total"), 0)
            for i in range(6):  # separate connections: SO_REUSEPORT spreads them
                with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=20) as s:
                    s.sendmail("x@remote.example", [f"m@{DOMAIN}"], b"Subject: %d\r\n\r\nhi\r\n" % i)
            with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=20) as s:
                with self.assertRaises(smtplib.SMTPRecipientsRefused):
                    s.sendmail("x@remote.example", [f"nobody@{DOMAIN}"], b"Subject: x\r\n\r\nx\r\n")
            content_type, text = scrape(port)
            self.assertTrue(content_type.startswith("text/plain; version=0.0.4"))
            self.assertEqual(value(text, "shardmail_messages_accepted_total"), 6)
            self.assertGreaterEqual(value(text, 'shardmail_connections_total{protocol="smtp"}'), 7)
            # EHLO/MAIL/RCPT/DATA/QUIT at least, per transaction
            self.assertGreaterEqual(value(text, 'shardmail_commands_total{protocol="smtp"}'), 30)
            self.assertGreater(value(text, "shardmail_store_syncs_total"), 0)
            self.assertEqual(value(text, "shardmail_smtp_accept_latency_seconds_count"), 6)
            self.assertGreater(value(text, "shardmail_received_bytes_total"), 6 * 10)
            with self.assertRaises(urllib.error.HTTPError) as e:
                scrape(port, "/nope")
            self.assertEqual(e.exception.code, 404)
            # The delivery log's counts: six stored, one refused at RCPT.
            self.assertEqual(value(text, 'shardmail_deliveries_total{direction="in",protocol="smtp",status="delivered"}'), 6)
            self.assertEqual(value(text, 'shardmail_deliveries_total{direction="in",protocol="smtp",status="rejected"}'), 1)
            self.assertEqual(value(text, 'shardmail_delivery_seconds_count{direction="in"}'), 6)
            self.assertEqual(value(text, 'shardmail_delivery_seconds_bucket{direction="in",le="+Inf"}'), 6)
            self.assertEqual(value(text, "shardmail_queue_oldest_age_seconds"), 0)
        finally:
            self.assertEqual(server.stop(), 0)

    def test_logins_handshakes_refusals_and_store_are_counted(self):
        port = free_port()
        server = Server(shards=2, settings={
            "listen.metrics": f'"127.0.0.1:{port}"',
            "limits.ip_limit_exempt_networks": "[]",
            "limits.connections_per_ip_max": "3",
            "store.compaction_check_secs": "1",
        })
        server.add_user(f"m@{DOMAIN}", "pw")
        server.start()
        time.sleep(0.5)  # the harness's probe connections are gone
        try:
            server.send("x@remote.example", [f"m@{DOMAIN}"], b"Subject: s\r\n\r\nstored\r\n")
            m = server.imaps(f"m@{DOMAIN}", "pw")
            m.logout()
            with self.assertRaises(imaplib.IMAP4.error):  # a wrong password, over TLS
                server.imaps(f"m@{DOMAIN}", "wrong")
            # From an address of its own: the scrapes and the sessions above use 127.0.0.1.
            connect = lambda: socket.create_connection(("127.0.0.1", server.ports["imap"]),
                                                       source_address=("127.0.0.2", 0))
            # (The harness's start-up probes may have been refused already.)
            _, before = scrape(port)
            reason = 'shardmail_connections_refused_total{reason="connections_per_ip_max"}'
            held = [connect() for _ in range(3)]
            for h in held:
                h.recv(100)
            refused = connect()
            refused.recv(200)
            refused.close()
            for h in held:
                h.close()
            text = wait_for_scrape(port, lambda t: 'shardmail_store_log_bytes{partition="' in t)
            self.assertEqual(value(text, 'shardmail_logins_total{protocol="imap",result="ok"}'), 1)
            self.assertEqual(value(text, 'shardmail_logins_total{protocol="imap",result="failed"}'), 1)
            self.assertGreaterEqual(value(text, 'shardmail_tls_handshakes_total{result="ok"}'), 2)
            self.assertEqual(value(text, reason) - value(before, reason), 1)
            logs = re.findall(r'^shardmail_store_log_bytes\{partition="(\d+)"\} (\d+)$', text, re.M)
            self.assertTrue(any(int(b) > 0 for _, b in logs), logs)
        finally:
            self.assertEqual(server.stop(), 0)

    def test_dashboard_queries_only_exported_metrics(self):
        port = free_port()
        server = Server(shards=1, settings={"listen.metrics": f'"127.0.0.1:{port}"',
                                            "store.compaction_check_secs": "1"})
        server.add_user(f"m@{DOMAIN}", "pw")
        server.start()
        try:
            server.send("x@remote.example", [f"m@{DOMAIN}"], b"Subject: s\r\n\r\nx\r\n")
            text = wait_for_scrape(port, lambda t: 'shardmail_store_log_bytes{partition="' in t)
        finally:
            self.assertEqual(server.stop(), 0)
        exported = set(re.findall(r"^(shardmail_\w+?)(?:\{| )", text, re.M))
        path = os.path.join(os.path.dirname(__file__), "..", "..", "contrib", "grafana", "shardmail.json")
        with open(path) as f:
            dashboard = json.load(f)
        exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
        exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
        used = set(re.findall(r"shardmail_\w+", " ".join(exprs)))
        self.assertGreaterEqual(len(used), 10)
        self.assertEqual(sorted(used - exported), [], "dashboard queries metrics the server does not export")
        # And every metric family is documented.
        with open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "metrics.md")) as f:
            docs = f.read()
        families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in exported}
        self.assertEqual(sorted(n for n in families if f"`{n}`" not in docs), [])


def wait_for_scrape(port, ready, timeout=15):
    deadline = time.time() + timeout
    while True:
        _, text = scrape(port)
        if ready(text) or time.time() > deadline:
            return text
        time.sleep(0.2)


if __name__ == "__main__":
    unittest.main()
