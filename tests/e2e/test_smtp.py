"""End-to-end SMTP against the real server with Python's smtplib.

Covers: MX delivery, submission with STARTTLS + AUTH, implicit TLS, multi-recipient
across partitions owned by different shards, BDAT, every bad-input case of issue 2,
graceful shutdown, export after stop (byte comparison), and the data-dir lock.
"""
import os
import shlex
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
import unittest

from harness import BIN, DOMAIN, Server, free_port, strip_received, tls_context

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"


def message(subject, body=b"hello\r\n", sender="sender@remote.example"):
    # Submitted mail needs a From: the login owns (auth.from_header_match).
    return (b"From: " + sender.encode() + b"\r\nTo: " + ALICE.encode() +
            b"\r\nSubject: " + subject.encode() + b"\r\nMessage-ID: <" + subject.encode() +
            b"@remote.example>\r\n\r\n" + body)


class SmtpEndToEnd(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server(settings={
            "limits.message_size_max": "65536",
            "limits.recipients_max": "5",
            "limits.bad_commands_max": "3",
            "limits.idle_timeout_secs": "2",
            # Nothing listens there: relayed mail stays queued whatever the host's DNS
            # says about remote.example (a fast NXDOMAIN would bounce it at once).
            'queue.transports."remote.example"': f'"127.0.0.1:{free_port()}"',
        })
        cls.server.add_user(ALICE, "alice-pw")
        cls.server.add_user(BOB, "bob-pw")
        # Users until one lives on each shard (for the cross-shard test).
        cls.by_shard = {}
        for i in range(40):
            email = f"user{i}@{DOMAIN}"
            cls.server.add_user(email)
            cls.by_shard.setdefault(cls.server.shard_of_user(email), email)
            if len(cls.by_shard) == cls.server.shards:
                break
        cls.server.start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def smtp(self):
        return smtplib.SMTP("127.0.0.1", self.server.ports["smtp"], timeout=20)

    def test_mx_delivery_is_stored_byte_exact(self):
        body = b"line one\r\n.a line that starts with a dot\r\n..two dots\r\n\xc3\xa9t\xc3\xa9 8bit\r\n"
        msg = message("mx-exact", body)
        with self.smtp() as s:
            s.ehlo("client.example")
            self.assertIn("pipelining", s.esmtp_features)
            self.assertIn("chunking", s.esmtp_features)
            self.assertEqual(s.esmtp_features["size"], "65536")
            refused = s.sendmail("sender@remote.example", [ALICE], msg, mail_options=["BODY=8BITMIME"])
            self.assertEqual(refused, {})
        stored = [m for m in self.server.messages(ALICE) if b"<mx-exact@" in m]
        self.assertEqual(len(stored), 1)
        self.assertEqual(strip_received(stored[0]), msg)
        self.assertIn(b"by mx.example.test (shardmail) with ESMTP", stored[0])

    def test_submission_starttls_auth(self):
        with smtplib.SMTP("127.0.0.1", self.server.ports["submission"], timeout=20) as s:
            s.ehlo()
            self.assertNotIn("auth", s.esmtp_features, "AUTH must not be offered before TLS")
            with self.assertRaises(smtplib.SMTPSenderRefused) as e:
                s.sendmail(ALICE, [BOB], message("no-auth"))
            self.assertEqual(e.exception.smtp_code, 530)
            s.starttls(context=tls_context())
            s.ehlo()
            self.assertIn("auth", s.esmtp_features)
            s.login(ALICE, "alice-pw")
            with self.assertRaises(smtplib.SMTPSenderRefused) as e:
                s.sendmail(BOB, [BOB], message("spoofed"))  # another user's address
            self.assertEqual((e.exception.smtp_code, e.exception.smtp_error[:5]), (553, b"5.7.1"))
            self.assertEqual(s.sendmail(ALICE, [BOB], message("submitted", sender=ALICE)), {})
            # Remote recipients of an authenticated user go to the outbound queue.
            self.assertEqual(s.sendmail(ALICE, ["friend@remote.example"], message("remote", sender=ALICE)), {})
        listing = self.server.cli("queue", "list").stdout
        self.assertIn("friend@remote.example", listing)
        stored = [m for m in self.server.messages(BOB) if b"<submitted@" in m]
        self.assertEqual(len(stored), 1)
        self.assertIn(b"with ESMTPSA", stored[0])

    def test_implicit_tls_submissions(self):
        with smtplib.SMTP_SSL("127.0.0.1", self.server.ports["submissions"], timeout=20,
                              context=tls_context()) as s:
            s.login(BOB, "bob-pw")
            self.assertEqual(s.sendmail(BOB, [ALICE], message("implicit-tls", sender=BOB)), {})
        self.assertTrue(any(b"<implicit-tls@" in m for m in self.server.messages(ALICE)))

    def test_multi_recipient_across_shards(self):
        users = list(self.by_shard.values())
        self.assertEqual(len(users), self.server.shards, "need a user on every shard")
        # Send from several connections so the kernel spreads them over both shards:
        # whichever shard accepts, at least one recipient is owned by the other one.
        for i in range(4):
            with self.smtp() as s:
                self.assertEqual(s.sendmail("a@remote.example", users + [ALICE],
                                            message(f"cross-{i}")), {})
        for u in users + [ALICE]:
            got = [m for m in self.server.messages(u) if b"<cross-" in m]
            self.assertEqual(len(got), 4, u)
            self.assertEqual(strip_received(got[0]), message("cross-0"))

    def test_bdat_chunks(self):
        part1 = b"From: x@remote.example\r\nSubject: bdat\r\nMessage-ID: <bdat@x>\r\n\r\n"
        part2 = b"chunked body\r\n.\r\nnot the end\r\n"
        with self.smtp() as s:
            s.ehlo()
            self.assertEqual(s.mail("x@remote.example")[0], 250)
            self.assertEqual(s.rcpt(ALICE)[0], 250)
            s.send(b"BDAT %d\r\n" % len(part1) + part1)
            code, text = s.getreply()
            self.assertEqual(code, 250, text)
            s.send(b"BDAT %d LAST\r\n" % len(part2) + part2)
            code, text = s.getreply()
            self.assertEqual(code, 250, text)
        got = [m for m in self.server.messages(ALICE) if b"<bdat@x>" in m]
        self.assertEqual(strip_received(got[0]), part1 + part2)

    def test_bad_input_replies(self):
        with self.smtp() as s:
            s.ehlo()
            self.assertEqual(s.docmd("RCPT TO:<" + ALICE + ">")[0], 503)
            code, text = s.docmd("NOOP " + "x" * 5000)
            self.assertEqual((code, text[:5]), (500, b"5.5.2"))
            self.assertEqual(s.docmd("VRFY alice")[0], 252)
            self.assertEqual(s.docmd("HELP")[0], 214)
            self.assertEqual(s.docmd("RSET")[0], 250)
            s.mail("x@remote.example")
            for i in range(5):
                self.assertEqual(s.rcpt(ALICE)[0], 250)
            code, text = s.rcpt(BOB)
            self.assertEqual((code, text[:5]), (452, b"4.5.3"))
            s.rset()
            code, text = s.rcpt(f"nobody@{DOMAIN}")
            self.assertEqual(code, 503)
            s.mail("x@remote.example")
            code, text = s.rcpt(f"nobody@{DOMAIN}")
            self.assertEqual((code, text[:5]), (550, b"5.1.1"))
            code, text = s.rcpt("someone@remote.example")
            self.assertEqual((code, text[:5]), (554, b"5.7.1"))

    def test_oversize_message_is_refused_and_session_continues(self):
        big = message("too-big", b"x" * 70000 + b"\r\n")
        with self.smtp() as s:
            # smtplib declares SIZE= itself, which is refused at MAIL (below); here the
            # client says nothing, so the limit is enforced while DATA streams in.
            s.ehlo()
            self.assertEqual(s.mail("x@remote.example")[0], 250)
            self.assertEqual(s.rcpt(ALICE)[0], 250)
            code, text = s.data(big)
            self.assertEqual((code, text[:5]), (552, b"5.3.4"))
            # Declared size too: refused at MAIL.
            code, _ = s.mail("x@remote.example", ["SIZE=999999"])
            self.assertEqual(code, 552)
            self.assertEqual(s.sendmail("x@remote.example", [ALICE], message("after-big")), {})
        self.assertFalse(any(b"<too-big@" in m for m in self.server.messages(ALICE)))

    def test_unknown_commands_disconnect(self):
        with self.smtp() as s:
            self.assertEqual(s.docmd("FOO")[0], 500)
            self.assertEqual(s.docmd("BAR")[0], 500)
            code, text = s.docmd("BAZ")
            self.assertEqual(code, 500)
            code, text = s.getreply()
            self.assertEqual(code, 421)
            with self.assertRaises(smtplib.SMTPServerDisconnected):
                s.noop()

    def test_auth_failure_is_delayed(self):
        with smtplib.SMTP_SSL("127.0.0.1", self.server.ports["submissions"], timeout=20,
                              context=tls_context()) as s:
            started = time.monotonic()
            with self.assertRaises(smtplib.SMTPAuthenticationError) as e:
                s.login(ALICE, "wrong")
            self.assertEqual(e.exception.smtp_code, 535)
            self.assertIn(b"5.7.8", e.exception.smtp_error)
            self.assertGreaterEqual(time.monotonic() - started, 0.25)
            s.login(ALICE, "alice-pw")

    def raw_data_session(self, subject):
        sock = socket.create_connection(("127.0.0.1", self.server.ports["smtp"]), timeout=20)
        f = sock.makefile("rb")
        f.readline()
        sock.sendall(b"EHLO c\r\nMAIL FROM:<x@remote.example>\r\nRCPT TO:<" + ALICE.encode() +
                     b">\r\nDATA\r\n")
        # Read up to the 354, however many EHLO keywords there are (bounded).
        lines = []
        while len(lines) < 40 and not (lines and lines[-1].startswith(b"354")):
            lines.append(f.readline())
        self.assertTrue(lines[-1].startswith(b"354"), lines)
        sock.sendall(message(subject, b"partial body\r\n"))
        return sock, f

    def test_client_stalls_mid_data_then_times_out(self):
        sock, f = self.raw_data_session("stalled")
        # Another session is unaffected while this one stalls.
        with self.smtp() as s:
            self.assertEqual(s.sendmail("x@remote.example", [ALICE], message("while-stalled")), {})
        started = time.monotonic()
        reply = f.readline()  # the server's 421 after limits.idle_timeout_secs=2
        self.assertTrue(reply.startswith(b"421 4.4.2"), reply)
        self.assertLess(time.monotonic() - started, 10)
        sock.close()
        stored = self.server.messages(ALICE)
        self.assertFalse(any(b"<stalled@" in m for m in stored))
        self.assertTrue(any(b"<while-stalled@" in m for m in stored))

    def test_client_disconnects_mid_data(self):
        sock, _ = self.raw_data_session("dropped")
        sock.close()
        time.sleep(0.3)
        self.assertFalse(any(b"<dropped@" in m for m in self.server.messages(ALICE)))

    def test_bare_lf_is_refused(self):
        sock = socket.create_connection(("127.0.0.1", self.server.ports["smtp"]), timeout=20)
        f = sock.makefile("rb")
        f.readline()
        sock.sendall(b"HELO c\r\nMAIL FROM:<x@remote.example>\r\nRCPT TO:<" + ALICE.encode() +
                     b">\r\nDATA\r\n")
        replies = [f.readline() for _ in range(4)]
        self.assertTrue(replies[-1].startswith(b"354"), replies)
        sock.sendall(b"Subject: bare\r\nMessage-ID: <bare@x>\r\n\r\nsmuggle\n.\nMAIL FROM:<y@z>\r\n.\r\n")
        reply = f.readline()
        self.assertTrue(reply.startswith(b"550 5.6.11"), reply)
        sock.close()
        self.assertFalse(any(b"<bare@x>" in m for m in self.server.messages(ALICE)))


class Lifecycle(unittest.TestCase):
    def test_large_messages_over_tls_both_ways(self):
        # Bulk transfer over TLS in both directions: a 4 MB submission (client → server)
        # and a pipelined POP3S download of it (server → client). rustls refuses more
        # ciphertext while 16 KiB of plaintext wait; feeding a whole socket read at once
        # used to fail such transfers at random.
        server = Server()  # default limits: 50 MiB messages
        server.add_user(BOB, "bob-pw")
        server.start()
        self.addCleanup(server.stop)
        body = b"Subject: big-tls\r\nMessage-ID: <big-tls@x>\r\n\r\n" + (b"y" * 998 + b"\r\n") * 4000
        for _ in range(3):
            with smtplib.SMTP_SSL("127.0.0.1", server.ports["submissions"], timeout=60,
                                  context=tls_context()) as s:
                s.login(BOB, "bob-pw")
                self.assertEqual(s.sendmail(BOB, [BOB], body), {})
        stored = [m for m in server.messages(BOB) if b"<big-tls@x>" in m]
        self.assertEqual(len(stored), 3)
        import socket
        raw = socket.create_connection(("127.0.0.1", server.ports["pop3s"]), timeout=60)
        with tls_context().wrap_socket(raw) as t:
            f = t.makefile("rb")
            f.readline()
            t.sendall(f"USER {BOB}\r\nPASS bob-pw\r\nSTAT\r\n".encode())
            replies = [f.readline() for _ in range(3)]
            self.assertTrue(all(r.startswith(b"+OK") for r in replies), replies)
            count = int(replies[2].split()[1])
            t.sendall(b"".join(b"RETR %d\r\n" % i for i in range(1, count + 1)) + b"QUIT\r\n")
            data = f.read()
        self.assertEqual(data.count(b"\r\nSubject: big-tls\r\n"), 3)
        self.assertIn(b"signing off", data[-100:], "every RETR answered, then QUIT")

    def test_graceful_stop_then_export_matches_and_lock(self):
        server = Server()
        server.add_user(ALICE)
        server.start()
        try:
            other = Server(data_dir=server.data_dir)
            with self.assertRaises(RuntimeError) as e:
                other.start()
            self.assertIn("another shardmail", str(e.exception))
            sent = [message(f"life-{i}", b"body %d\r\n" % i) for i in range(20)]
            with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=20) as s:
                for m in sent:
                    self.assertEqual(s.sendmail("x@remote.example", [ALICE], m), {})
        finally:
            code = server.stop()
        self.assertEqual(code, 0, server.read_log())
        stored = server.messages(ALICE)
        self.assertEqual([strip_received(m) for m in stored], sent)
        # Restart on the same data: the snapshot loads and new mail gets the next UID.
        server.start()
        try:
            with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=20) as s:
                s.sendmail("x@remote.example", [ALICE], message("after-restart"))
        finally:
            self.assertEqual(server.stop(), 0)
        out = server.export(ALICE)
        names = os.listdir(os.path.join(out, "INBOX", "cur"))
        self.assertEqual(len(names), 21)
        self.assertEqual(sorted(os.listdir(out)), ["Drafts", "INBOX", "Junk", "Sent", "Trash"])

    def test_aliases_and_catch_all_reload_while_running(self):
        server = Server()
        server.add_user(ALICE)
        server.start()
        try:
            with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=20) as s:
                with self.assertRaises(smtplib.SMTPRecipientsRefused):
                    s.sendmail("x@remote.example", [f"info@{DOMAIN}"], message("before-alias"))
            server.cli("alias", "add", f"info@{DOMAIN}", ALICE)
            server.cli("alias", "add", f"@{DOMAIN}", ALICE)
            time.sleep(1.2)  # shards re-check users.json at most once a second
            with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=20) as s:
                self.assertEqual(s.sendmail("x@remote.example", [f"info@{DOMAIN}"],
                                            message("via-alias")), {})
                self.assertEqual(s.sendmail("x@remote.example", [f"anything@{DOMAIN}"],
                                            message("via-catch-all")), {})
                # Addressed directly too: one copy, without the alias trace.
                self.assertEqual(s.sendmail("x@remote.example", [f"info@{DOMAIN}", ALICE],
                                            message("both")), {})
            listing = server.cli("alias", "list").stdout
            self.assertIn(f"info@{DOMAIN}\t{ALICE}", listing)
        finally:
            self.assertEqual(server.stop(), 0)
        stored = server.messages(ALICE)
        # Which address each alias or catch-all copy was for (Postfix's two headers).
        for m, original in zip(stored, [f"info@{DOMAIN}", f"anything@{DOMAIN}"]):
            self.assertTrue(m.startswith(f"Delivered-To: {ALICE}\r\nX-Original-To: {original}"
                                         f"\r\nReturn-Path: <x@remote.example>\r\n".encode()),
                            m[:200])
        self.assertNotIn(b"Delivered-To:", stored[2])
        got = [strip_received(m[m.index(b"Return-Path:"):]) for m in stored]
        self.assertEqual(got, [message("via-alias"), message("via-catch-all"), message("both")])

    def test_low_memlock_is_a_clear_error(self):
        server = Server()
        cmd = "ulimit -l 64; exec " + " ".join(shlex.quote(a) for a in [BIN, *server.args(), "serve"])
        result = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("RLIMIT_MEMLOCK", result.stderr)
        self.assertIn("ulimit -l", result.stderr)
        self.assertNotIn("panicked", result.stderr)

    def test_config_errors_name_the_key(self):
        server = Server(settings={"limits.message_size_max": '"lots"'})
        result = server.cli("check-config", check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("limits.message_size_max", result.stderr)
        # A wrong type says what was expected, not serde's internals.
        server = Server(settings={"limits.message_size_max": "true"})
        result = server.cli("check-config", check=False)
        self.assertIn("expected a byte count such as 52428800", result.stderr)
        self.assertNotIn("untagged", result.stderr)

    def test_user_add_judges_domains_by_the_running_server(self):
        server = Server()  # domains.local given to serve with --set only
        server.start()
        try:
            with open(os.path.join(server.data_dir, "running.toml")) as f:
                self.assertIn(DOMAIN, f.read())
            plain = [BIN, "--data-dir", server.data_dir, "user", "add", "--password-stdin"]
            ok = subprocess.run([*plain, f"new@{DOMAIN}"], input="pw\n", capture_output=True,
                                text=True, timeout=60, check=True)
            self.assertNotIn("warning", ok.stderr)
            other = subprocess.run([*plain, "someone@elsewhere.test"], input="pw\n",
                                   capture_output=True, text=True, timeout=60, check=True)
            self.assertIn("elsewhere.test is not in domains.local", other.stderr)
        finally:
            server.stop()

    def test_service_manager_hears_ready_and_stopping(self):
        # systemd's notify protocol, with this test as the service manager.
        path = os.path.join(tempfile.mkdtemp(prefix="shardmail-notify-"), "notify.sock")
        manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        manager.bind(path)
        manager.settimeout(30)
        server = Server()
        os.environ["NOTIFY_SOCKET"] = path
        try:
            server.start()
        finally:
            del os.environ["NOTIFY_SOCKET"]
        try:
            self.assertTrue(manager.recv(4096).startswith(b"READY=1\n"))
        finally:
            self.assertEqual(server.stop(), 0)
        self.assertTrue(manager.recv(4096).startswith(b"STOPPING=1\n"))
        manager.close()

    def test_systemd_unit_verifies(self):
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            self.skipTest("systemd-analyze not installed")
        unit = os.path.join(os.path.dirname(__file__), "..", "..", "contrib", "systemd",
                            "shardmail.service")
        with open(unit) as f:
            text = f.read().replace("/usr/bin/shardmail", os.path.abspath(BIN))
        staged = os.path.join(tempfile.mkdtemp(prefix="shardmail-unit-"), "shardmail.service")
        with open(staged, "w") as f:
            f.write(text)
        result = subprocess.run([analyze, "verify", staged], capture_output=True, text=True,
                                timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("Type=notify", text)

    def test_check_config_prints_a_file_serve_runs_on(self):
        server = Server(settings={
            "queue.relay_host": '"relay.example.test:587"',
            "queue.relay_username": '"bob"',
            "queue.relay_password": '"hunter2"',
        })
        printed = server.cli("check-config").stdout
        self.assertNotIn("hunter2", printed)
        self.assertIn('relay_password = "<secret: not shown>"', printed)
        path = os.path.join(server.data_dir, "effective.toml")
        with open(path, "w") as f:
            f.write(printed)
        again = subprocess.run([BIN, "--config", path, "check-config"], capture_output=True,
                               text=True, timeout=60, check=True).stdout
        self.assertEqual(again, printed)
        # serve runs on it: the printed file alone (no --set) brings the server up.
        server.args = lambda: ["--config", path]
        server.start()
        try:
            with smtplib.SMTP(*server.smtp_address(), timeout=20) as s:
                self.assertEqual(s.noop()[0], 250)
        finally:
            server.stop()


if __name__ == "__main__":
    unittest.main()
