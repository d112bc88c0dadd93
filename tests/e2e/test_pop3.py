"""End-to-end POP3 against the real server with Python's poplib.

Mail is delivered over SMTP (smtplib, and raw BDAT for a message without a final
newline), then read with poplib: LIST/UIDL/TOP/RETR byte-exact, DELE+QUIT removes,
DELE+disconnect keeps, RSET, STLS and implicit TLS, [IN-USE], plaintext refused before
TLS, failed logins, UIDL stable across sessions and restarts and equal to the store's
UIDVALIDITY.UID, and sessions for accounts owned by either shard (the hand-off).
"""
import os
import poplib
import smtplib
import time
import unittest

from harness import DOMAIN, Server, strip_received, tls_context

MESSAGES = [
    b"Subject: one\r\n\r\nplain body\r\n",
    b"Subject: two\r\n\r\n.starts with a dot\r\n..two dots\r\nend\r\n",
    b"Subject: three\r\n\r\nline 1\r\nline 2\r\n.\r\nline 4\r\nno final newline",
]


def expected_retr(stored):
    """What poplib returns for a stored message: lines without CRLF, unstuffed."""
    if stored.endswith(b"\r\n"):
        stored = stored[:-2]
    return stored.split(b"\r\n")


class Pop3EndToEnd(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server(settings={"limits.auth_failure_delay_ms": "300"})
        cls.users = cls.server.users_on_every_shard("pop")
        cls.ports = cls.server.ports
        cls.server.start()
        for user in cls.users:
            cls.deliver(user)

    @classmethod
    def deliver(cls, user):
        with smtplib.SMTP("127.0.0.1", cls.server.ports["smtp"], timeout=20) as s:
            s.sendmail("x@remote.example", [user], MESSAGES[0])
            s.sendmail("x@remote.example", [user], MESSAGES[1])
            # BDAT stores bytes exactly as sent: a message without a final newline.
            s.ehlo()
            s.mail("x@remote.example")
            s.rcpt(user)
            s.send(b"BDAT %d LAST\r\n" % len(MESSAGES[2]) + MESSAGES[2])
            code, text = s.getreply()
            assert code == 250, text

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def login(self, user, implicit=True):
        if implicit:
            p = poplib.POP3_SSL("127.0.0.1", self.ports["pop3s"], context=tls_context(), timeout=20)
        else:
            p = poplib.POP3("127.0.0.1", self.ports["pop3"], timeout=20)
            p.stls(context=tls_context())
        p.user(user)
        p.pass_("pw")
        return p

    def test_read_everything_byte_exact_on_every_shard(self):
        for user in self.users:
            for implicit in (True, False):
                p = self.login(user, implicit)
                try:
                    count, size = p.stat()
                    self.assertEqual(count, 3)
                    stored = self.server.messages(user)
                    self.assertEqual(size, sum(len(m) for m in stored))
                    self.assertEqual([strip_received(m) for m in stored], MESSAGES)
                    _, listing, _ = p.list()
                    self.assertEqual(listing, [b"%d %d" % (i + 1, len(m)) for i, m in enumerate(stored)])
                    for i, m in enumerate(stored):
                        _, lines, octets = p.retr(i + 1)
                        self.assertEqual(lines, expected_retr(m), f"{user} message {i + 1}")
                    _, top, _ = p.top(2, 1)
                    header_end = stored[1].index(b"\r\n\r\n")
                    self.assertEqual(top, stored[1][:header_end].split(b"\r\n") + [b"", b".starts with a dot"])
                finally:
                    p.quit()

    def test_uidl_matches_store_and_is_stable(self):
        user = self.users[0]
        p = self.login(user)
        _, first, _ = p.uidl()
        p.quit()
        export = self.server.export(user)
        names = sorted(os.listdir(os.path.join(export, "INBOX", "cur")),
                       key=lambda n: int(n.split("_")[1].split(".")[0]))
        store_ids = [n.split(".")[1].replace("_", ".") for n in names]  # uidvalidity.uid
        self.assertEqual([l.split()[1].decode() for l in first], store_ids)
        p = self.login(user, implicit=False)
        _, second, _ = p.uidl()
        p.quit()
        self.assertEqual(first, second)

    def test_in_use_and_plaintext_refused(self):
        user = self.users[-1]
        plain = poplib.POP3("127.0.0.1", self.ports["pop3"], timeout=20)
        with self.assertRaises(poplib.error_proto) as e:
            plain.user(user)
        self.assertIn(b"[AUTH]", e.exception.args[0])
        plain.quit()
        first = self.login(user)
        try:
            second = poplib.POP3_SSL("127.0.0.1", self.ports["pop3s"], context=tls_context(), timeout=20)
            second.user(user)
            with self.assertRaises(poplib.error_proto) as e:
                second.pass_("pw")
            self.assertIn(b"[IN-USE]", e.exception.args[0])
            second.quit()
        finally:
            first.quit()
        self.login(user).quit()  # the lock is released at QUIT

    def test_failed_login_is_delayed(self):
        p = poplib.POP3_SSL("127.0.0.1", self.ports["pop3s"], context=tls_context(), timeout=20)
        p.user(self.users[0])
        started = time.monotonic()
        with self.assertRaises(poplib.error_proto) as e:
            p.pass_("wrong")
        self.assertIn(b"[AUTH]", e.exception.args[0])
        self.assertGreaterEqual(time.monotonic() - started, 0.25)
        p.quit()


class Pop3Deletion(unittest.TestCase):
    def test_dele_quit_removes_dele_disconnect_keeps_rset_restores(self):
        server = Server()
        pop3s = server.ports["pop3s"]
        user = f"del@{DOMAIN}"
        server.add_user(user, "pw")
        server.start()
        try:
            Pop3EndToEnd.server = server
            Pop3EndToEnd.deliver(user)

            def login():
                p = poplib.POP3_SSL("127.0.0.1", pop3s, context=tls_context(), timeout=20)
                p.user(user)
                p.pass_("pw")
                return p

            p = login()
            p.dele(1)
            p.file.close()  # disconnect without QUIT: nothing is deleted
            p.sock.close()
            time.sleep(0.3)
            p = login()
            self.assertEqual(p.stat()[0], 3)
            p.dele(2)
            p.rset()
            self.assertEqual(p.stat()[0], 3)
            _, before, _ = p.uidl()
            p.dele(1)
            p.dele(3)
            self.assertIn(b"2 messages deleted", p.quit())
            p = login()
            _, after, _ = p.uidl()
            self.assertEqual([l.split()[1] for l in after], [before[1].split()[1]])
            p.quit()
        finally:
            self.assertEqual(server.stop(), 0)
        # The expunge is durable: after a restart (and in the export) it stays gone.
        self.assertEqual([strip_received(m) for m in server.messages(user)], [MESSAGES[1]])
        server.start()
        try:
            p = poplib.POP3_SSL("127.0.0.1", pop3s, context=tls_context(), timeout=20)
            p.user(user)
            p.pass_("pw")
            _, again, _ = p.uidl()
            self.assertEqual([l.split()[1] for l in again], [before[1].split()[1]])
            p.quit()
        finally:
            server.stop()


if __name__ == "__main__":
    unittest.main()
