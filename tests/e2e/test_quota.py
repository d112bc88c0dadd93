"""Quotas end to end (issue 12) with Python's smtplib and imaplib against the real
server: `shardmail user quota` sets an account's limits (shown by `user list`), SMTP
refuses a full account's recipient at RCPT (452 4.2.2, or 552 5.2.2 with
quota.hard_bounce) while other recipients of the same message are delivered, IMAP
APPEND gets NO [OVERQUOTA], GETQUOTAROOT reports usage, and expunging frees room.
The accounts live on both shards, so the RCPT check reads usage published by the
owning shard to the one that took the SMTP connection.
"""
import imaplib
import smtplib
import time
import unittest

from harness import DOMAIN, Server, tls_context

BODY = b"Subject: q\r\n\r\n" + b"x" * 2000 + b"\r\n"


def imap_login(server, user):
    c = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=tls_context())
    c.login(user, "pw")
    return c


def quota_response(client):
    typ, data = client.getquotaroot("INBOX")
    assert typ == "OK", data
    # imaplib returns [[QUOTAROOT lines], [QUOTA lines]]
    return [line.decode() for line in data[1]]


class QuotaEndToEnd(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server()
        cls.users = cls.server.users_on_every_shard("quota", "pw")
        cls.server.add_user(f"roomy@{DOMAIN}", "pw")
        cls.server.start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def wait_for_rcpt(self, smtp, rcpt, code, seconds=5):
        """The server re-reads users.json within a second of a change."""
        deadline = time.time() + seconds
        while True:
            smtp.ehlo_or_helo_if_needed()
            smtp.rset()
            mail = smtp.mail("sender@remote.example")
            assert mail[0] == 250, mail
            got = smtp.rcpt(rcpt)
            if got[0] == code or time.time() > deadline:
                return got
            time.sleep(0.2)

    def test_a_full_account_is_refused_at_rcpt_and_append(self):
        full, roomy = self.users[0], f"roomy@{DOMAIN}"
        out = self.server.cli("user", "quota", full, "--messages", "3", "--storage", "1MiB")
        self.assertIn("quota of", out.stdout)
        listing = self.server.cli("user", "list").stdout
        line = next(l for l in listing.splitlines() if l.startswith(full))
        self.assertIn("storage 1.0 MiB", line)
        self.assertIn("messages 3", line)
        self.assertIn("unlimited (default)", next(
            l for l in listing.splitlines() if l.startswith(roomy)))
        with smtplib.SMTP(*self.server.smtp_address(), timeout=30) as s:
            for _ in range(3):
                s.sendmail("sender@remote.example", [full], BODY)
            got = self.wait_for_rcpt(s, full, 452)
            self.assertEqual(got[0], 452, got)
            self.assertIn(b"4.2.2", got[1])
            # The same message still reaches an account with room.
            s.rset()
            refused = s.sendmail("sender@remote.example", [full, roomy], BODY)
            self.assertEqual(refused[full][0], 452)
        c = imap_login(self.server, full)
        try:
            self.assertEqual(int(c.select("INBOX")[1][0]), 3)
            # The shard owning the session re-reads users.json within a second.
            deadline = time.time() + 5
            while "MESSAGE" not in " ".join(quota_response(c)) and time.time() < deadline:
                time.sleep(0.2)
            self.assertRegex(" ".join(quota_response(c)), r'"" \(STORAGE [67] 1024 MESSAGE 3 3\)')
            with self.assertRaises(imaplib.IMAP4.error) as e:
                typ, data = c.append("INBOX", None, None, BODY)
                if typ != "OK":
                    raise imaplib.IMAP4.error(data)
            self.assertIn("OVERQUOTA", str(e.exception))
            # Expunging one frees room for one more delivery.
            c.store("1", "+FLAGS", "(\\Deleted)")
            c.expunge()
            self.assertIn("MESSAGE 2 3", " ".join(quota_response(c)))
        finally:
            c.logout()
        with smtplib.SMTP(*self.server.smtp_address(), timeout=30) as s:
            got = self.wait_for_rcpt(s, full, 250)
            self.assertEqual(got[0], 250, got)

    def test_hard_bounce_and_a_quota_set_back_to_default(self):
        other = self.users[-1]
        self.server.cli("user", "quota", other, "--messages", "1")
        with smtplib.SMTP(*self.server.smtp_address(), timeout=30) as s:
            s.sendmail("sender@remote.example", [other], BODY)
            self.assertEqual(self.wait_for_rcpt(s, other, 452)[0], 452)
        self.server.cli("user", "quota", other, "--messages", "default")
        with smtplib.SMTP(*self.server.smtp_address(), timeout=30) as s:
            self.assertEqual(self.wait_for_rcpt(s, other, 250)[0], 250)
        hard = Server(settings={"quota.messages_default": "1", "quota.hard_bounce": "true"})
        hard.add_user(f"h@{DOMAIN}", "pw")
        hard.start()
        try:
            with smtplib.SMTP(*hard.smtp_address(), timeout=30) as s:
                s.sendmail("sender@remote.example", [f"h@{DOMAIN}"], BODY)
                s.mail("sender@remote.example")
                code, text = s.rcpt(f"h@{DOMAIN}")
                self.assertEqual(code, 552, text)
                self.assertIn(b"5.2.2", text)
        finally:
            hard.stop()


if __name__ == "__main__":
    unittest.main()
