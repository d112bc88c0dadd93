"""End-to-end email authentication with a real DNS server on loopback.

dnsmasq (Debian's dnsmasq-base) serves SPF, DKIM and DMARC records for *.test on a
loopback port and answers NXDOMAIN for every other .test name (--local); shardmail is
pointed at it with dns.servers and checks loopback clients (auth.exempt_networks=[]).
Mail goes in over SMTP with smtplib: DMARC p=reject is refused and not stored,
p=quarantine lands in Junk, a pass gets the right Authentication-Results, a forged
Authentication-Results with our authserv-id is removed, a temporary DNS failure defers,
and a message signed by shardmail's own DKIM key (via submission) verifies as pass when
delivered back to it.
"""
import os
import shutil
import smtplib
import subprocess
import time
import unittest

from harness import DOMAIN, HAVE_DNSMASQ, Server, free_port, log_events, start_dnsmasq, tls_context

HOST = "mx.example.test"


def message(from_addr, subject, extra=b""):
    return (extra + b"From: " + from_addr.encode() + b"\r\nTo: alice@" + DOMAIN.encode() +
            b"\r\nSubject: " + subject.encode() + b"\r\nMessage-ID: <" + subject.encode() +
            b"@e2e>\r\n\r\nbody of " + subject.encode() + b"\r\n")


# Skipped only on a developer machine without dnsmasq; under CI it must run.
@unittest.skipUnless(HAVE_DNSMASQ or os.environ.get("CI"),
                     "dnsmasq is needed (apt-get install dnsmasq-base; .ci/run installs it)")
class AuthEndToEnd(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        dns_port = free_port()
        cls.server = Server(settings={
            "server.hostname": HOST,
            "dns.servers": f'["127.0.0.1:{dns_port}"]',
            "dns.timeout": '"1s"',
            "auth.exempt_networks": "[]",
        })
        cls.alice = f"alice@{DOMAIN}"
        cls.server.add_user(cls.alice, "pw")
        cls.server.cli("dkim", "generate", DOMAIN, "--selector", "s1", "--algorithm", "ed25519")
        dkim_value = cls.server.cli("dkim", "show", DOMAIN, "--value").stdout.strip()
        spf_local = "v=spf1 ip4:127.0.0.1 -all"
        spf_elsewhere = "v=spf1 ip4:192.0.2.99 -all"
        txt = [
            (DOMAIN, spf_local),
            (f"s1._domainkey.{DOMAIN}", dkim_value),
            (f"_dmarc.{DOMAIN}", "v=DMARC1; p=reject"),
            ("good.test", spf_local),
            ("_dmarc.good.test", "v=DMARC1; p=reject"),
            ("reject.test", spf_elsewhere),
            ("_dmarc.reject.test", "v=DMARC1; p=reject"),
            ("quarantine.test", spf_elsewhere),
            ("_dmarc.quarantine.test", "v=DMARC1; p=quarantine"),
        ]
        hosts = [(d, "127.0.0.1") for d in (DOMAIN, "good.test", "reject.test", "quarantine.test")]
        cls.dns = start_dnsmasq(dns_port, txt, hosts, dead_zone="broken.test")
        cls.server.start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.dns.terminate()
        cls.dns.wait(timeout=10)

    def send(self, mail_from, msg):
        with smtplib.SMTP("127.0.0.1", self.server.ports["smtp"], timeout=30) as s:
            return s.sendmail(mail_from, [self.alice], msg)

    def stored(self, subject, mailbox="INBOX"):
        return [m for m in self.server.messages(self.alice, mailbox) if b"Subject: " + subject.encode() in m]

    def test_pass_gets_results_and_forged_results_are_removed(self):
        forged = (b"Authentication-Results: " + HOST.encode() + b"; dkim=pass header.d=paypal.com\r\n"
                  b"Return-Path: <ceo@paypal.com>\r\n")
        self.assertEqual(self.send("bob@good.test", message("bob@good.test", "good", forged)), {})
        [stored] = self.stored("good")
        head = stored.split(b"\r\n\r\n", 1)[0].decode()
        # Final delivery: our Return-Path (the envelope sender) first, the one that
        # came with the message gone (RFC 5321 §4.4); then our results.
        self.assertTrue(head.startswith("Return-Path: <bob@good.test>\r\n"
                                        f"Authentication-Results: {HOST};"), head)
        self.assertEqual(head.count("Return-Path:"), 1, head)
        self.assertIn("spf=pass", head)
        self.assertIn("dmarc=pass", head)
        self.assertNotIn("paypal.com", head)
        self.assertEqual(head.count("Authentication-Results:"), 1)

    def test_dmarc_reject_is_refused_and_not_stored(self):
        with self.assertRaises(smtplib.SMTPDataError) as e:
            self.send("eve@reject.test", message("eve@reject.test", "rejected"))
        self.assertEqual(e.exception.smtp_code, 550)
        self.assertIn(b"5.7.1", e.exception.smtp_error)
        self.assertEqual(self.stored("rejected"), [])
        self.assertEqual(self.stored("rejected", "Junk"), [])

    def test_dmarc_quarantine_goes_to_junk(self):
        self.assertEqual(self.send("eve@quarantine.test", message("eve@quarantine.test", "suspect")), {})
        self.assertEqual(self.stored("suspect"), [])
        [junk] = self.stored("suspect", "Junk")
        self.assertIn(b"dmarc=fail", junk)

    def test_temporary_dns_failure_defers(self):
        with self.assertRaises(smtplib.SMTPRecipientsRefused) as e:
            self.send("x@broken.test", message("x@broken.test", "deferred"))
        code, text = e.exception.recipients[self.alice]
        self.assertEqual(code, 451)
        self.assertIn(b"4.7.24", text)

    def test_own_dkim_signature_verifies_when_delivered_back(self):
        with smtplib.SMTP_SSL("127.0.0.1", self.server.ports["submissions"], timeout=30,
                              context=tls_context()) as s:
            s.login(self.alice, "pw")
            s.sendmail(self.alice, [self.alice], message(self.alice, "signed"))
        [submitted] = self.stored("signed")
        self.assertIn(b"auth=pass smtp.auth=" + self.alice.encode(), submitted)
        self.assertIn(b"DKIM-Signature:", submitted)
        # Take what was stored (signature and all, minus our trace headers) and send it
        # to the MX port as if it came back from the Internet.
        # Stored: [our auth=pass results][DKIM-Signature][Received][message].
        start = submitted.index(b"DKIM-Signature:")
        received = submitted.index(b"Received: ", start)
        received_end = submitted.index(b"\r\n", submitted.index(b"+0000", received)) + 2
        resent = submitted[start:received] + submitted[received_end:]
        self.assertEqual(self.send(self.alice, resent), {})
        back = [m for m in self.stored("signed") if b"dkim=pass" in m]
        self.assertEqual(len(back), 1, [m[:600] for m in self.stored("signed")])
        self.assertIn(f"header.d={DOMAIN}".encode(), back[0])
        self.assertIn(b"dmarc=pass", back[0])



@unittest.skipUnless(HAVE_DNSMASQ or os.environ.get("CI"),
                     "dnsmasq is needed (apt-get install dnsmasq-base; .ci/run installs it)")
class DomainListsAndDkimAllowlist(unittest.TestCase):
    """antispam.dnsbl lists of sender and DKIM domains (dnsmasq answers them), and
    greylisting skipped for a DKIM pass from antispam.allow_dkim_domains: a real
    signature (shardmail's own, made through submission) verified after DATA."""

    def test_listed_domains_and_greylisting_cleared_by_dkim(self):
        dns_port = free_port()
        alice = f"alice@{DOMAIN}"
        server = Server(settings={
            "server.hostname": HOST,
            "dns.servers": f'["127.0.0.1:{dns_port}"]',
            "dns.timeout": '"1s"',
            "auth.exempt_networks": "[]",
            "antispam.exempt_networks": "[]",
            "antispam.greylist": "true",
            "antispam.allow_dkim_domains": f'["{DOMAIN}"]',
            "antispam.dnsbl": '[{zone="dbl.test",weight=10,lookup="sender_domain"}]',
        })
        server.add_user(alice, "pw")
        server.cli("dkim", "generate", DOMAIN, "--selector", "s1", "--algorithm", "ed25519")
        dkim_value = server.cli("dkim", "show", DOMAIN, "--value").stdout.strip()
        spf = "v=spf1 ip4:127.0.0.1 -all"
        txt = [(DOMAIN, spf), (f"s1._domainkey.{DOMAIN}", dkim_value), ("good.test", spf),
               ("spammy.test", spf)]
        dns = start_dnsmasq(dns_port, txt, hosts=[], dead_zone="broken.test", extra=[
            "--address=/spammy.test.dbl.test/127.0.0.2"])
        server.start()
        try:
            with smtplib.SMTP_SSL("127.0.0.1", server.ports["submissions"], timeout=30,
                                  context=tls_context()) as s:
                s.login(alice, "pw")
                s.sendmail(alice, [alice], message(alice, "signed"))
            submitted = server.messages(alice)[-1]
            start = submitted.index(b"DKIM-Signature:")
            received = submitted.index(b"Received: ", start)
            received_end = submitted.index(b"\r\n", submitted.index(b"+0000", received)) + 2
            resent = submitted[start:received] + submitted[received_end:]

            def mx_send(sender, body):
                with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30,
                                  local_hostname="client.remote.test") as s:
                    return s.sendmail(sender, [alice], body)

            # Greylisted, but signed by an allowlisted domain: accepted at once.
            self.assertEqual(mx_send(alice, resent), {})
            # The same greylisting without a signature: 451 after DATA.
            with self.assertRaises(smtplib.SMTPDataError) as e:
                mx_send("x@good.test", message("x@good.test", "unsigned"))
            self.assertEqual(e.exception.smtp_code, 451)
            self.assertIn(b"Greylisted", e.exception.smtp_error)
            # A listed sender domain is refused outright, greylisted or not.
            with self.assertRaises(smtplib.SMTPDataError) as e:
                mx_send("x@spammy.test", message("x@spammy.test", "spammy"))
            self.assertEqual(e.exception.smtp_code, 554)
            self.assertIn(b"5.7.1 Message refused; listed: spammy.test@dbl.test", e.exception.smtp_error)
        finally:
            server.stop()
            dns.terminate()
            dns.wait(timeout=10)
        back = [m for m in server.messages(alice) if b"dkim=pass" in m]
        self.assertEqual(len(back), 1)
        lines = [e for e in log_events(server, "shardmail::antispam") if e.get("check") == "greylist"]
        self.assertTrue(any(e.get("dkim_domain") == DOMAIN for e in lines), lines)

if __name__ == "__main__":
    unittest.main()
