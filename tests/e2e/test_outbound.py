"""End-to-end outbound delivery, all on loopback.

Two shardmail instances (sender and receiver) and dnsmasq serving MX records that point
at loopback addresses (127.0.0.2…), one port for all MX hosts (queue.remote_port).
Scripted sinks stand in for misbehaving peers. Covers: delivery byte-exact with a DKIM
signature that the receiver verifies, 451 then 250 (retry), 550 (DSN in the sender's
INBOX), a receiver that is down until after the sender restarts, a transport override,
a relay host with AUTH, a null MX, and open-relay attempts on every port.
"""
import os
import shutil
import smtplib
import subprocess
import tempfile
import time
import unittest

from harness import Server, free_port, log_events, tls_context, wait_for
from sink import SmtpSink
from test_auth import HAVE_DNSMASQ, start_dnsmasq

PORT = free_port()          # every MX host listens here, on its own loopback address
RECEIVER_IP = "127.0.0.2"
SINK451_IP = "127.0.0.3"
SINK550_IP = "127.0.0.4"
LATER_IP = "127.0.0.5"
OVERRIDE_IP = "127.0.0.6"
RELAY_IP = "127.0.0.7"
BROKEN_TLS_IP = "127.0.0.9"
DSN_SINK_IP = "127.0.0.11"
VERIFIED_IP = "127.0.0.12"  # a receiver whose certificate chains to a test CA


def make_test_ca(directory, ip):
    """A CA and a server certificate for `ip`, with openssl; returns (ca, cert, key)."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)
    ca_key, ca = os.path.join(directory, "ca.key"), os.path.join(directory, "ca.pem")
    key, csr = os.path.join(directory, "server.key"), os.path.join(directory, "server.csr")
    cert, ext = os.path.join(directory, "server.pem"), os.path.join(directory, "ext.cnf")
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=shardmail test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", key, "-out", csr, "-subj", "/CN=mx.verified.test")
    with open(ext, "w") as f:
        f.write(f"subjectAltName=IP:{ip},DNS:mx.verified.test\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", ext)
    return ca, cert, key


def message(subject, body=b"hello from the sender\r\n.leading dot line\r\n"):
    return (b"From: Alice <alice@sender.test>\r\nTo: someone\r\nSubject: " + subject.encode() +
            b"\r\nMessage-ID: <" + subject.encode() + b"@sender.test>\r\n\r\n" + body)


@unittest.skipUnless(HAVE_DNSMASQ or os.environ.get("CI"), "dnsmasq is needed")
class Outbound(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dns_port = free_port()
        cls.ca_dir = tempfile.mkdtemp(prefix="shardmail-ca-")
        ca, cert, key = make_test_ca(cls.ca_dir, VERIFIED_IP)
        cls.verified = Server(settings={
            "server.hostname": "mx.verified.test",
            "domains.local": '["verified.test"]',
            "listen.smtp": f'"{VERIFIED_IP}:{PORT}"',
            "tls.cert": f'"{cert}"',
            "tls.key": f'"{key}"',
            "dns.servers": f'["127.0.0.1:{cls.dns_port}"]',
            "auth.exempt_networks": '["127.0.0.0/8"]',
        })
        cls.verified.add_user("vera@verified.test", "pw")
        cls.receiver = Server(shards=2, settings={
            "server.hostname": "mx.receiver.test",
            "domains.local": '["receiver.test"]',
            "listen.smtp": f'"{RECEIVER_IP}:{PORT}"',
            "dns.servers": f'["127.0.0.1:{cls.dns_port}"]',
            "auth.exempt_networks": "[]",
        })
        cls.receiver.add_user("bob@receiver.test", "pw")
        cls.sender = Server(shards=2, settings={
            "server.hostname": "mx.sender.test",
            "domains.local": '["sender.test"]',
            "dns.servers": f'["127.0.0.1:{cls.dns_port}"]',
            "queue.remote_port": str(PORT),
            "queue.retry_min": '"1s"',
            "queue.retry_max": '"2s"',
            "queue.transports.\"override.test\"": f'"{OVERRIDE_IP}:{PORT}"',
            "queue.connections_per_destination_max": "2",
            "queue.transports.\"brokentls.test\"": f'"{BROKEN_TLS_IP}:{PORT}"',
            "queue.transports.\"dsn.test\"": f'"{DSN_SINK_IP}:{PORT}"',
            "queue.transports.\"verified.test\"": f'"{VERIFIED_IP}:{PORT}"',
            "queue.tls_ca_file": f'"{ca}"',
        })
        cls.sender.add_user("alice@sender.test", "pw")
        cls.sender.cli("dkim", "generate", "sender.test", "--selector", "s1", "--algorithm", "ed25519")
        dkim = cls.sender.cli("dkim", "show", "sender.test", "--value").stdout.strip()
        cls.dns = start_dnsmasq(
            cls.dns_port,
            txt=[("sender.test", "v=spf1 ip4:127.0.0.0/8 -all"),
                 ("s1._domainkey.sender.test", dkim),
                 ("_dmarc.sender.test", "v=DMARC1; p=reject")],
            hosts=[("mx.receiver.test", RECEIVER_IP), ("mx.sink451.test", SINK451_IP),
                   ("mx.sink550.test", SINK550_IP), ("mx.later.test", LATER_IP),
                   ("sender.test", "127.0.0.1")],
            dead_zone="broken.test",
            extra=["--mx-host=receiver.test,mx.receiver.test,10",
                   "--mx-host=sink451.test,mx.sink451.test,10",
                   "--mx-host=sink550.test,mx.sink550.test,10",
                   "--mx-host=later.test,mx.later.test,10",
                   "--mx-host=nullmx.test,.,0"],
        )
        cls.sink451 = SmtpSink(SINK451_IP, PORT, data_codes=(451, 250))
        cls.sink550 = SmtpSink(SINK550_IP, PORT, rcpt_code=550)
        cls.override = SmtpSink(OVERRIDE_IP, PORT)
        cls.dsn_sink = SmtpSink(DSN_SINK_IP, PORT, dsn=True)
        cls.receiver.start()
        cls.verified.start()
        cls.sender.start()

    @classmethod
    def tearDownClass(cls):
        cls.sender.stop()
        cls.receiver.stop()
        cls.verified.stop()
        shutil.rmtree(cls.ca_dir, ignore_errors=True)
        for sink in (cls.sink451, cls.sink550, cls.override, cls.dsn_sink):
            sink.stop()
        cls.dns.terminate()
        cls.dns.wait(timeout=10)

    def submit(self, to, msg, server=None):
        server = server or self.sender
        with smtplib.SMTP_SSL("127.0.0.1", server.ports["submissions"], timeout=30,
                              context=tls_context()) as s:
            s.login("alice@sender.test", "pw")
            return s.sendmail("alice@sender.test", to, msg)

    def test_delivered_byte_exact_and_dkim_verified_by_the_receiver(self):
        msg = message("to-receiver")
        self.assertEqual(self.submit(["bob@receiver.test"], msg), {})
        got = wait_for(lambda: [m for m in self.receiver.messages("bob@receiver.test")
                                if b"<to-receiver@sender.test>" in m], what="delivery")
        stored = got[0]
        self.assertTrue(stored.endswith(msg), stored[-300:])
        head = stored[:stored.index(msg)].decode()
        self.assertIn("dkim=pass", head)
        self.assertIn("header.d=sender.test", head)
        self.assertIn("dmarc=pass", head)
        self.assertNotIn("smtp.auth=alice", head, "our auth results must not leave")
        self.assertIn("by mx.sender.test (shardmail)", head)
        wait_for(lambda: "0 message(s)" in self.sender.cli("queue", "list").stderr, what="empty queue")

    def test_delivery_log_has_a_line_per_recipient_per_attempt(self):
        msg = message("logged")
        self.assertEqual(self.submit(["bob@receiver.test", "user@sink550.test"], msg), {})
        deliveries = lambda server: log_events(server, "shardmail::delivery")
        # The submission: one `queued` line per recipient, with the client's TLS and login.
        queued = wait_for(lambda: [e for e in deliveries(self.sender)
                                   if e["direction"] == "in" and e["to"] in
                                   ("bob@receiver.test", "user@sink550.test")
                                   and e["from"] == "alice@sender.test"], what="queued lines")
        self.assertEqual(sorted(e["to"] for e in queued[-2:]),
                         ["bob@receiver.test", "user@sink550.test"])
        line = queued[-1]
        self.assertEqual((line["status"], line["user"]), ("queued", "alice@sender.test"))
        self.assertTrue(line["tls"].startswith("TLSv1_3"), line)
        self.assertTrue(line["relay"].startswith("queue:"), line)
        self.assertIn(line["id"], line["reply"])  # the id of `250 ... stored as ID`
        queue_id = line["relay"].split(":", 1)[1]
        # The attempts: delivered to the receiver, bounced by the sink's 550.
        out = wait_for(lambda: (lambda o: len(o) >= 2 and o)(
            [e for e in deliveries(self.sender) if e["direction"] == "out" and e["id"] == queue_id]),
            what="outbound lines")
        by_rcpt = {e["to"]: e for e in out}
        bob, sink = by_rcpt["bob@receiver.test"], by_rcpt["user@sink550.test"]
        self.assertEqual(bob["status"], "delivered")
        self.assertIn("mx.receiver.test[", bob["relay"])
        self.assertTrue(bob["reply"].startswith("2.0.0") or "stored" in bob["reply"], bob)
        self.assertEqual(sink["status"], "bounced")
        self.assertIn("550", sink["reply"] + sink["relay"] + str(sink))
        self.assertEqual((bob["attempt"], bob["from"]), ("1", "alice@sender.test"))
        # The receiver's line: checks passed, the mailbox it went to, the client's HELO.
        got = wait_for(lambda: [e for e in deliveries(self.receiver)
                                if e["to"] == "bob@receiver.test" and e["status"] == "delivered"
                                and e["from"] == "alice@sender.test"], what="receiver line")
        r = got[-1]
        self.assertEqual((r["spf"], r["dkim"], r["dmarc"]), ("pass", "pass", "pass"), r)
        self.assertEqual((r["relay"], r["helo"]), ("mailbox:INBOX", "mx.sender.test"), r)
        self.assertEqual(r["client_ip"], "127.0.0.1")
        # A recipient refused at RCPT is a `rejected` line too.
        with smtplib.SMTP(RECEIVER_IP, PORT, timeout=30) as s:
            s.ehlo("client.test")
            s.mail("x@elsewhere.test")
            code, _ = s.rcpt("nobody@receiver.test")
            self.assertEqual(code, 550)
        rejected = wait_for(lambda: [e for e in deliveries(self.receiver)
                                     if e["to"] == "nobody@receiver.test"], what="rejected line")
        self.assertEqual((rejected[-1]["status"], rejected[-1]["helo"]), ("rejected", "client.test"))
        self.assertIn("User unknown", rejected[-1]["reply"])

    def test_451_is_retried_until_250(self):
        self.assertEqual(self.submit(["user@sink451.test"], message("retry")), {})
        wait_for(lambda: self.sink451.messages, what="the retry to succeed")
        self.assertGreaterEqual(self.sink451.attempts, 2)
        _, rcpts, data = self.sink451.messages[0]
        self.assertEqual(rcpts, ["user@sink451.test"])
        self.assertTrue(data.endswith(message("retry")))

    def test_550_bounces_to_the_sender(self):
        self.assertEqual(self.submit(["nobody@sink550.test"], message("bounce-me")), {})
        dsn = wait_for(lambda: [m for m in self.sender.messages("alice@sender.test")
                                if b"Undelivered Mail Returned to Sender" in m], what="the DSN")[0]
        self.assertIn(b"multipart/report; report-type=delivery-status", dsn)
        self.assertIn(b"Final-Recipient: rfc822; nobody@sink550.test", dsn)
        self.assertIn(b"Status: 5.1.1", dsn)
        self.assertIn(b"Remote-MTA: dns; mx.sink550.test", dsn)
        self.assertIn(b"Message-ID: <bounce-me@sender.test>", dsn, "original headers included")
        self.assertNotIn(b"leading dot line", dsn, "the original body is not returned")

    def submit_dsn(self, to, msg, mail_options=(), rcpt_options=()):
        with smtplib.SMTP_SSL("127.0.0.1", self.sender.ports["submissions"], timeout=30,
                              context=tls_context()) as s:
            s.login("alice@sender.test", "pw")
            self.assertIn("dsn", s.esmtp_features)
            return s.sendmail("alice@sender.test", to, msg, list(mail_options), list(rcpt_options))

    def notices(self, marker):
        return [m for m in self.sender.messages("alice@sender.test")
                if b"report-type=delivery-status" in m and marker in m]

    def test_dsn_failure_notice_honours_ret_envid_and_orcpt(self):
        self.assertEqual(self.submit_dsn(["nobody@sink550.test"], message("dsn-full"),
                                         ["RET=FULL", "ENVID=QQ314159"],
                                         ["NOTIFY=FAILURE", "ORCPT=rfc822;orig+40sender.test"]), {})
        dsn = wait_for(lambda: self.notices(b"dsn-full@sender.test"), what="the failure notice")[0]
        self.assertIn(b"Action: failed", dsn)
        self.assertIn(b"Original-Envelope-Id: QQ314159\r\n", dsn)
        self.assertIn(b"Original-Recipient: rfc822; orig@sender.test\r\n"
                      b"Final-Recipient: rfc822; nobody@sink550.test", dsn)
        self.assertIn(b"Content-Type: message/rfc822", dsn)
        self.assertIn(b"leading dot line", dsn, "RET=FULL returns the body")

    def test_notify_never_suppresses_the_bounce(self):
        self.assertEqual(self.submit_dsn(["never@sink550.test", "nobody@sink550.test"],
                                         message("dsn-never"), [],
                                         ["NOTIFY=NEVER"]), {})
        # Both recipients get NOTIFY=NEVER (smtplib applies rcpt_options to each).
        wait_for(lambda: [e for e in log_events(self.sender, "shardmail::delivery")
                          if e.get("to") == "never@sink550.test" and e.get("status") == "bounced"],
                 what="the bounce to be decided")
        time.sleep(1.5)
        self.assertEqual(self.notices(b"dsn-never@sender.test"), [])

    def test_notify_success_relayed_and_delivered(self):
        # A next hop without DSN: we say "relayed", and pass nothing on.
        self.assertEqual(self.submit_dsn(["someone@override.test"], message("dsn-relayed"), [],
                                         ["NOTIFY=SUCCESS"]), {})
        relayed = wait_for(lambda: self.notices(b"dsn-relayed@sender.test"), what="relayed")[0]
        self.assertIn(b"Action: relayed", relayed)
        self.assertIn(b"Final-Recipient: rfc822; someone@override.test", relayed)
        self.assertFalse([l for l in self.override.envelope_lines if "NOTIFY" in l])
        # A local mailbox: "delivered".
        self.assertEqual(self.submit_dsn(["alice@sender.test"], message("dsn-local"), [],
                                         ["NOTIFY=SUCCESS,FAILURE"]), {})
        delivered = wait_for(lambda: self.notices(b"dsn-local@sender.test"), what="delivered")[0]
        self.assertIn(b"Action: delivered", delivered)
        self.assertIn(b"Status: 2.0.0", delivered)

    def test_dsn_request_is_passed_to_a_next_hop_that_offers_dsn(self):
        self.assertEqual(self.submit_dsn(["x@dsn.test"], message("dsn-passed"),
                                         ["RET=HDRS", "ENVID=E+2B1"],
                                         ["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;x+40dsn.test"]), {})
        wait_for(lambda: any(m[1] == ["x@dsn.test"] for m in self.dsn_sink.messages),
                 what="delivery to the DSN-capable sink")
        lines = self.dsn_sink.envelope_lines
        self.assertTrue(any(l.startswith("MAIL FROM:<alice@sender.test>") and "RET=HDRS" in l
                            and "ENVID=E+2B1" in l for l in lines), lines)
        self.assertIn("RCPT TO:<x@dsn.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;x@dsn.test", lines)
        time.sleep(1.5)
        self.assertEqual(self.notices(b"dsn-passed@sender.test"), [],
                         "the next hop reports success, not us")

    def test_requiretls_never_goes_out_unverified(self):
        with smtplib.SMTP_SSL("127.0.0.1", self.sender.ports["submissions"], timeout=30,
                              context=tls_context()) as s:
            s.login("alice@sender.test", "pw")
            self.assertIn("requiretls", s.esmtp_features)
            # An MX route cannot be authenticated yet (no MTA-STS/DANE): bounced, 5.7.10.
            s.sendmail("alice@sender.test", ["bob@receiver.test"], message("requiretls-mx"),
                       ["REQUIRETLS"])
            # A configured route whose server has no TLS: held, never sent in plaintext.
            s.sendmail("alice@sender.test", ["someone@override.test"],
                       message("requiretls-plain"), ["REQUIRETLS"])
        dsn = wait_for(lambda: self.notices(b"requiretls-mx@sender.test"), what="the bounce")[0]
        self.assertIn(b"Status: 5.7.10", dsn)
        self.assertIn(b"REQUIRETLS", dsn)
        deferred = wait_for(lambda: [e for e in log_events(self.sender, "shardmail::delivery")
                                     if e.get("to") == "someone@override.test"
                                     and e.get("status") == "deferred"
                                     and "STARTTLS" in e.get("reply", "")],
                            what="the REQUIRETLS message to be held")
        self.assertTrue(deferred)
        self.assertFalse([m for m in self.override.messages if b"requiretls-plain" in m[2]])
        # A configured route with a certificate from a CA in queue.tls_ca_file, to a
        # server offering REQUIRETLS: delivered, and REQUIRETLS went along.
        with smtplib.SMTP_SSL("127.0.0.1", self.sender.ports["submissions"], timeout=30,
                              context=tls_context()) as s:
            s.login("alice@sender.test", "pw")
            s.sendmail("alice@sender.test", ["vera@verified.test"],
                       message("requiretls-ok"), ["REQUIRETLS"])
        got = wait_for(lambda: [m for m in self.verified.messages("vera@verified.test")
                                if b"requiretls-ok" in m], what="the verified delivery")[0]
        self.assertRegex(got, rb"with ESMTPS")
        done = [e for e in log_events(self.sender, "shardmail::delivery")
                if e.get("to") == "vera@verified.test" and e.get("status") == "delivered"]
        self.assertTrue(done and "tls=TLS" in done[-1]["relay"], done)
        self.assertFalse([m for m in self.receiver.messages("bob@receiver.test")
                          if b"requiretls-mx" in m])

    def test_null_mx_bounces(self):
        self.assertEqual(self.submit(["x@nullmx.test"], message("null-mx")), {})
        dsn = wait_for(lambda: [m for m in self.sender.messages("alice@sender.test")
                                if b"x@nullmx.test" in m and b"Status: 5.1.10" in m], what="null MX DSN")
        self.assertTrue(dsn)

    def test_transport_override(self):
        self.assertEqual(self.submit(["someone@override.test"], message("override")), {})
        wait_for(lambda: any(m[1] == ["someone@override.test"] for m in self.override.messages),
                 what="delivery via the transport override")

    def test_connections_are_reused_and_limited_per_destination(self):
        before = self.override.connections
        for i in range(3):
            self.assertEqual(self.submit([f"seq{i}@override.test"], message(f"seq-{i}")), {})
            wait_for(lambda: any(f"seq{i}@override.test" in m[1] for m in self.override.messages),
                     what=f"message {i}")
            # The sink has the message before the sender has read its 250 and pooled
            # the connection; the queue empties only after that.
            wait_for(lambda: f"seq{i}@override.test" not in self.sender.cli("queue", "list").stdout,
                     what="the attempt to finish")
        # Pools are per shard (submissions land on either): at most one new connection
        # per shard for three messages in a row.
        self.assertLessEqual(self.override.connections - before, self.sender.shards)
        # A burst: never more than queue.connections_per_destination_max (2 here) per
        # shard at once.
        for i in range(8):
            self.assertEqual(self.submit([f"burst{i}@override.test"], message(f"burst-{i}")), {})
        wait_for(lambda: sum(1 for m in self.override.messages if m[1][0].startswith("burst")) == 8,
                 what="the burst")
        self.assertLessEqual(self.override.max_concurrent, 2 * self.sender.shards)

    def test_smtputf8_to_a_server_without_it_bounces(self):
        with smtplib.SMTP_SSL("127.0.0.1", self.sender.ports["submissions"], timeout=30,
                              context=tls_context()) as s:
            s.login("alice@sender.test", "pw")
            s.sendmail("alice@sender.test", ["jörg@override.test"], message("utf8"),
                       mail_options=["SMTPUTF8"])
        dsn = wait_for(lambda: [m for m in self.sender.messages("alice@sender.test")
                                if b"Status: 5.6.7" in m], what="the SMTPUTF8 DSN")[0]
        self.assertIn("jörg@override.test".encode(), dsn)

    def test_failed_starttls_falls_back_to_plaintext_and_is_recorded(self):
        sink = SmtpSink(BROKEN_TLS_IP, PORT, broken_tls=True)
        try:
            self.assertEqual(self.submit(["x@brokentls.test"], message("tls-fallback")), {})
            wait_for(lambda: sink.messages, what="plaintext delivery after the failed handshake")
            self.assertGreaterEqual(sink.connections, 2, "one broken TLS attempt, then plaintext")
            with open(self.sender.log_path, encoding="utf-8", errors="replace") as f:
                log = f.read()
            self.assertIn("STARTTLS failed; retrying without TLS", log)
            self.assertRegex(log, r"SMTP transaction done.*tls=none")
        finally:
            sink.stop()

    def test_down_receiver_is_retried_after_sender_restart(self):
        self.assertEqual(self.submit(["user@later.test"], message("later")), {})
        wait_for(lambda: "user@later.test" in self.sender.cli("queue", "list").stdout, what="queued")
        time.sleep(1.5)  # at least one failed attempt (nothing listens yet)
        self.assertEqual(self.sender.stop(), 0)
        sink = SmtpSink(LATER_IP, PORT)
        try:
            self.sender.start()
            wait_for(lambda: sink.messages, what="delivery after restart")
            self.assertEqual(sink.messages[0][1], ["user@later.test"])
        finally:
            sink.stop()

    def test_kill_9_keeps_every_queued_message_and_delivers_it_once(self):
        later = "127.0.0.8"
        self.sender.settings[f'queue.transports."crash.test"'] = f'"{later}:{PORT}"'
        self.sender.stop()
        self.sender.start()
        subjects = [f"crash-{i}" for i in range(10)]
        for subject in subjects:
            self.assertEqual(self.submit([f"{subject}@crash.test"], message(subject)), {})
        self.sender.kill()  # every message above got 250: each must arrive exactly once
        sink = SmtpSink(later, PORT)
        try:
            self.sender.start()
            wait_for(lambda: len(sink.messages) >= len(subjects), what="all queued messages")
            time.sleep(1.5)  # nothing more may arrive
            got = sorted(m[1][0].split("@")[0] for m in sink.messages)
            self.assertEqual(got, sorted(subjects))
        finally:
            sink.stop()

    def test_relay_host_with_auth(self):
        relay = SmtpSink(RELAY_IP, PORT, auth=("relayuser", "relaypass"))
        server = Server(settings={
            "domains.local": '["sender.test"]',
            "queue.relay_host": f'"{RELAY_IP}:{PORT}"',
            "queue.relay_username": '"relayuser"',
            "queue.relay_password": '"relaypass"',
            "queue.relay_tls": '"none"',
            "queue.retry_min": '"1s"',
            "dns.servers": f'["127.0.0.1:{self.dns_port}"]',
        })
        server.add_user("alice@sender.test", "pw")
        server.start()
        try:
            self.assertEqual(self.submit(["anyone@elsewhere.example"], message("relayed"), server), {})
            wait_for(lambda: relay.messages, what="delivery through the relay host")
            self.assertEqual(relay.messages[0][1], ["anyone@elsewhere.example"])
        finally:
            server.stop()
            relay.stop()

    def test_delay_notice_is_sent_once(self):
        dead = "127.0.0.10"  # nothing listens there
        server = Server(settings={
            "domains.local": '["sender.test"]',
            "queue.retry_min": '"1s"',
            "queue.retry_max": '"1s"',
            "queue.delay_notice": '"1s"',
            "queue.transports.\"slow.test\"": f'"{dead}:{PORT}"',
            "dns.servers": f'["127.0.0.1:{self.dns_port}"]',
        })
        server.add_user("alice@sender.test", "pw")
        server.start()
        try:
            self.assertEqual(self.submit(["x@slow.test"], message("delayed"), server), {})
            notice = wait_for(lambda: [m for m in server.messages("alice@sender.test")
                                       if b"Delayed Mail" in m], what="the delay notice")[0]
            self.assertIn(b"Action: delayed", notice)
            self.assertIn(b"Final-Recipient: rfc822; x@slow.test", notice)
            self.assertIn(b"Will-Retry-Until:", notice)
            time.sleep(3)  # more failed attempts: still one notice, still queued
            notices = [m for m in server.messages("alice@sender.test") if b"Delayed Mail" in m]
            self.assertEqual(len(notices), 1)
            self.assertIn("x@slow.test", server.cli("queue", "list").stdout)
        finally:
            server.stop()

    def test_never_an_open_relay(self):
        msg = message("open-relay")
        with smtplib.SMTP("127.0.0.1", self.sender.ports["smtp"], timeout=30) as s:
            with self.assertRaises(smtplib.SMTPRecipientsRefused) as e:
                s.sendmail("spammer@evil.example", ["victim@receiver.test"], msg)
            code, text = e.exception.recipients["victim@receiver.test"]
            self.assertEqual((code, text[:5]), (554, b"5.7.1"))
        with smtplib.SMTP("127.0.0.1", self.sender.ports["submission"], timeout=30) as s:
            s.starttls(context=tls_context())
            with self.assertRaises(smtplib.SMTPSenderRefused) as e:
                s.sendmail("spammer@evil.example", ["victim@receiver.test"], msg)
            self.assertEqual(e.exception.smtp_code, 530)
        with smtplib.SMTP_SSL("127.0.0.1", self.sender.ports["submissions"], timeout=30,
                              context=tls_context()) as s:
            with self.assertRaises(smtplib.SMTPSenderRefused) as e:
                s.sendmail("spammer@evil.example", ["victim@receiver.test"], msg)
            self.assertEqual(e.exception.smtp_code, 530)
        self.assertNotIn("victim@receiver.test", self.sender.cli("queue", "list").stdout)


if __name__ == "__main__":
    unittest.main()
