"""LMTP (RFC 2033) on listen.lmtp: Python's smtplib.LMTP, a client this project did not
write, delivers into local mailboxes and gets one reply per recipient after the data;
relaying and AUTH are refused; an idle LMTP client does not hold up MX delivery; a
non-loopback listen.lmtp is a config error naming the key. When Debian's Postfix is
installed (and we are root), a private Postfix instance on loopback relays into
shardmail with `virtual_transport = lmtp:inet:…` and honours each recipient's reply."""
import os
import pwd
import re
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
import unittest

from harness import Server, free_port, wait_for


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


POSTFIX_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
lmtp      unix  - - n - - lmtp
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


@unittest.skipUnless(shutil.which("postfix") and os.geteuid() == 0,
                     "needs Debian's postfix package and root (a private instance is started)")
class PostfixToLmtp(unittest.TestCase):
    """A real edge MTA delivering into shardmail over LMTP."""

    @classmethod
    def setUpClass(cls):
        cls.lmtp_port, cls.smtpd_port = free_port(), free_port()
        cls.server = Server(settings={"listen.lmtp": f'"127.0.0.1:{cls.lmtp_port}"'})
        cls.server.add_user("bob@example.test", "pw")
        cls.server.start()
        cls.dir = tempfile.mkdtemp(prefix="shardmail-postfix-", dir="/tmp")
        os.chmod(cls.dir, 0o755)  # Postfix's daemons run as `postfix` and must get in
        for sub in ("queue", "data"):
            os.makedirs(os.path.join(cls.dir, sub))
        postfix = pwd.getpwnam("postfix")
        os.chown(os.path.join(cls.dir, "data"), postfix.pw_uid, postfix.pw_gid)
        cls.maillog = os.path.join(cls.dir, "maillog")
        with open(os.path.join(cls.dir, "main.cf"), "w") as f:
            f.write("\n".join([
                "compatibility_level = 3.6",
                f"queue_directory = {cls.dir}/queue",
                f"data_directory = {cls.dir}/data",
                "mail_owner = postfix",
                "setgid_group = postdrop",
                "myhostname = edge.example.test",
                "mydestination =",
                "inet_interfaces = 127.0.0.1",
                "inet_protocols = ipv4",
                "mynetworks = 127.0.0.0/8",
                "smtpd_relay_restrictions = permit_mynetworks, reject",
                "virtual_mailbox_domains = example.test",
                f"virtual_transport = lmtp:inet:127.0.0.1:{cls.lmtp_port}",
                f"maillog_file = {cls.maillog}",
                "maillog_file_prefixes = /tmp",
                "",
            ]))
        with open(os.path.join(cls.dir, "master.cf"), "w") as f:
            f.write(POSTFIX_MASTER_CF.format(port=cls.smtpd_port))
        started = subprocess.run(["postfix", "-c", cls.dir, "start"], timeout=60,
                                 capture_output=True, text=True)
        if started.returncode != 0:
            cls.server.stop()
            raise RuntimeError(f"postfix did not start: {started.stderr}\n{cls.read_log()}")
        wait_for(lambda: cls.listening(cls.smtpd_port), what="Postfix's smtpd")

    @staticmethod
    def listening(port):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    @classmethod
    def tearDownClass(cls):
        # `postfix stop` signals this instance's master by its pid file, nothing else.
        subprocess.run(["postfix", "-c", cls.dir, "stop"], timeout=60, capture_output=True)
        cls.server.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    @classmethod
    def read_log(cls):
        try:
            with open(cls.maillog, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def test_postfix_delivers_over_lmtp_and_honours_each_reply(self):
        msg = (b"From: a@remote.test\r\nTo: bob@example.test\r\nSubject: through postfix\r\n"
               b"Message-ID: <via-postfix@remote.test>\r\n\r\nhello over LMTP\r\n")
        with smtplib.SMTP("127.0.0.1", self.smtpd_port, timeout=30) as s:
            s.sendmail("a@remote.test", ["bob@example.test", "nobody@example.test"], msg)
        stored = wait_for(lambda: [m for m in self.server.messages("bob@example.test")
                                   if b"<via-postfix@remote.test>" in m], timeout=60,
                          what="Postfix's LMTP delivery")[0]
        self.assertIn(b"with LMTP id", stored)
        self.assertIn(b"hello over LMTP", stored)
        log = wait_for(lambda: self.read_log() if "nobody@example.test" in self.read_log() and
                       "status=bounced" in self.read_log() else "", timeout=60,
                       what="Postfix to record the refused recipient")
        self.assertRegex(log, r"to=<bob@example\.test>.*relay=127\.0\.0\.1\[127\.0\.0\.1\]:"
                         + str(self.lmtp_port) + r".*status=sent \(250 2\.1\.5 <bob@example\.test>")
        self.assertRegex(log, r"to=<nobody@example\.test>.*status=bounced.*550 5\.1\.1")


if __name__ == "__main__":
    unittest.main()
