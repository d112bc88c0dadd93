"""The Prometheus endpoint (listen.metrics) against the real server: counters from
every shard are merged in one scrape, and they match what the test did."""
import re
import smtplib
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
        finally:
            self.assertEqual(server.stop(), 0)


if __name__ == "__main__":
    unittest.main()
