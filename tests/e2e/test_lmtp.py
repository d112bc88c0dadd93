"""LMTP (RFC 2033) on listen.lmtp: Python's smtplib.LMTP, a client this project did not
write, delivers into local mailboxes and gets one reply per recipient after the data;
relaying and AUTH are refused; an idle LMTP client does not hold up MX delivery; a
non-loopback listen.lmtp is a config error naming the key."""
import smtplib
import socket
import unittest

from harness import Server, free_port


class Lmtp(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.lmtp_port = free_port()
        cls.server = Server(settings={"listen.lmtp": f'"127.0.0.1:{cls.lmtp_port}"'})
        cls.server.add_user("bob@example.test", "pw")
        cls.server.add_user("carol@example.test", "pw")
        cls.server.start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def lmtp(self):
        client = smtplib.LMTP("127.0.0.1", self.lmtp_port, timeout=20)
        code, _ = client.ehlo("edge.example.test")  # smtplib's LMTP sends LHLO here
        self.assertEqual(code, 250)
        return client

    def test_delivery_with_a_reply_per_recipient(self):
        msg = b"From: a@remote.test\r\nSubject: via lmtp\r\nMessage-ID: <lmtp-1@remote.test>\r\n\r\nhello\r\n"
        with self.lmtp() as c:
            # smtplib's LMTP.sendmail reads one reply after the data, as for SMTP; the
            # protocol steps it offers are used instead, with a reply read per recipient.
            self.assertEqual(c.mail("a@remote.test")[0], 250)
            codes = [c.rcpt(r)[0] for r in
                     ("bob@example.test", "nobody@example.test", "carol@example.test")]
            self.assertEqual(codes, [250, 550, 250])
            first = c.data(msg)
            second = c.getreply()
            self.assertEqual([first[0], second[0]], [250, 250])
            self.assertIn(b"<bob@example.test>", first[1])
            self.assertIn(b"<carol@example.test>", second[1])
        for user in ("bob@example.test", "carol@example.test"):
            stored = [m for m in self.server.messages(user) if b"<lmtp-1@remote.test>" in m]
            self.assertEqual(len(stored), 1, user)
            self.assertIn(b"with LMTP id", stored[0])
            self.assertIn(b"Return-Path: <a@remote.test>", stored[0])

    def test_every_reply_after_data_is_per_recipient(self):
        # Raw LMTP: two accepted recipients, two replies after the final dot.
        with socket.create_connection(("127.0.0.1", self.lmtp_port), timeout=20) as s:
            f = s.makefile("rb")
            self.assertTrue(f.readline().startswith(b"220"))
            s.sendall(b"LHLO edge.example.test\r\n")
            while not f.readline().startswith(b"250 "):
                pass
            s.sendall(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<bob@example.test>\r\n"
                      b"RCPT TO:<carol@example.test>\r\nDATA\r\n")
            self.assertEqual([f.readline()[:3] for _ in range(4)], [b"250", b"250", b"250", b"354"])
            s.sendall(b"Subject: raw\r\n\r\nraw\r\n.\r\n")
            replies = [f.readline() for _ in range(2)]
            self.assertTrue(replies[0].startswith(b"250 2.1.5 <bob@example.test>"), replies)
            self.assertTrue(replies[1].startswith(b"250 2.1.5 <carol@example.test>"), replies)
            s.sendall(b"QUIT\r\n")
            self.assertTrue(f.readline().startswith(b"221"))

    def test_no_relay_no_auth_no_ehlo(self):
        with self.lmtp() as c:
            with self.assertRaises(smtplib.SMTPRecipientsRefused) as e:
                c.sendmail("a@remote.test", ["x@elsewhere.test"], b"Subject: x\r\n\r\nx\r\n")
            self.assertEqual(e.exception.recipients["x@elsewhere.test"][0], 554)
            self.assertFalse(c.has_extn("auth"))
            self.assertFalse(c.has_extn("starttls"))
            code, _ = c.docmd("AUTH PLAIN AGJvYkBleGFtcGxlLnRlc3QAcHc=")
            self.assertEqual(code, 502)
        with socket.create_connection(("127.0.0.1", self.lmtp_port), timeout=20) as s:
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"EHLO edge.example.test\r\n")
            self.assertTrue(f.readline().startswith(b"500 5.5.1 This is an LMTP server"))

    def test_an_idle_lmtp_client_does_not_hold_up_mx_delivery(self):
        idle = socket.create_connection(("127.0.0.1", self.lmtp_port), timeout=20)
        try:
            idle.recv(100)
            idle.sendall(b"LHLO edge.example.test\r\nMAIL FROM:<a@remote.test>\r\n"
                         b"RCPT TO:<bob@example.test>\r\nDATA\r\nSubject: half")  # and stalls
            with smtplib.SMTP(*self.server.smtp_address(), timeout=20) as s:
                s.sendmail("x@remote.test", ["carol@example.test"],
                           b"Subject: bystander\r\nMessage-ID: <by-1@remote.test>\r\n\r\nhi\r\n")
            self.assertTrue([m for m in self.server.messages("carol@example.test")
                             if b"<by-1@remote.test>" in m])
        finally:
            idle.close()

    def test_lmtp_must_stay_on_loopback(self):
        result = self.server.cli("--set", 'listen.lmtp="0.0.0.0:2424"', "check-config", check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("listen.lmtp", result.stderr)
        self.assertIn("loopback", result.stderr)


if __name__ == "__main__":
    unittest.main()
