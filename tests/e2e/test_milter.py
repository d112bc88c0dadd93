"""milter.servers against real milters: a libmilter filter written for the tests
(milter_daemon.py on Debian's python3-milter) for every reply type, a dead and a
slow milter for default_action and the timeouts (with a bystander served
meanwhile), and rspamd from Debian through its milter proxy (GTUBE rejected, a clean
message delivered with rspamd's headers)."""
import json
import os
import shutil
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
import unittest

from harness import DOMAIN, Server, free_port, log_events, tls_context, wait_for

ALICE = f"alice@{DOMAIN}"
SYSTEM_PYTHON = "/usr/bin/python3"
HERE = os.path.dirname(os.path.abspath(__file__))


def have_python_milter():
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    return subprocess.run([SYSTEM_PYTHON, "-c", "import Milter"], capture_output=True).returncode == 0


HAVE_MILTER = have_python_milter()
RSPAMD = shutil.which("rspamd") or ("/usr/bin/rspamd" if os.path.exists("/usr/bin/rspamd") else None)


def wait_listening(port, proc, timeout):
    def up():
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False
    wait_for(up, timeout=timeout, what=f"a listener on port {port}")


class TestMilterProcess:
    """milter_daemon.py on a free port; its record of every conversation."""

    def __init__(self):
        self.port = free_port()
        self.record = tempfile.mktemp(prefix="milter-record-")
        self.proc = subprocess.Popen([SYSTEM_PYTHON, os.path.join(HERE, "milter_daemon.py"),
                                      str(self.port), self.record],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_listening(self.port, self.proc, 20)

    def seen(self):
        if not os.path.exists(self.record):
            return []
        with open(self.record) as f:
            return [json.loads(line) for line in f if line.strip()]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def message(action, extra=""):
    return (f"From: sender@remote.example\r\nTo: {ALICE}\r\nSubject: milter: {action}\r\n"
            f"X-Remove-Me: yes\r\n{extra}\r\nthe original body\r\n")


def mx(server):
    return smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30,
                        local_hostname="client.remote.test")


def milter_setting(port, **extra):
    fields = {"address": f'"inet:127.0.0.1:{port}"', **extra}
    return "[{" + ",".join(f"{k}={v}" for k, v in fields.items()) + "}]"


def filtered_server(filter_process, timeout):
    """A started server with ALICE, filtering through `filter_process` (its .port)."""
    server = Server(settings={"milter.servers": milter_setting(filter_process.port, timeout=timeout)})
    server.add_user(ALICE, "pw")
    return server.start()


@unittest.skipUnless(HAVE_MILTER, "needs Debian's python3-milter (apt-get install python3-milter)")
class MilterReplies(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.milter = TestMilterProcess()
        cls.server = filtered_server(cls.milter, timeout='"10s"')

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.milter.stop()

    def send(self, action, extra=""):
        with mx(self.server) as s:
            s.sendmail("sender@remote.example", [ALICE], message(action, extra))

    def last_stored(self, mailbox="INBOX"):
        return self.server.messages(ALICE, mailbox)[-1]

    def test_accept_and_what_the_milter_was_told(self):
        self.send("accept")
        stored = self.last_stored()
        self.assertIn(b"Subject: milter: accept", stored)
        seen = self.milter.seen()[-1]
        self.assertEqual(seen["connect"]["addr"], "127.0.0.1")
        self.assertEqual(seen["client_addr"], "127.0.0.1")
        self.assertEqual(seen["j"], "mx.example.test")
        self.assertEqual(seen["helo"], "client.remote.test")
        self.assertEqual(seen["from"], "<sender@remote.example>")
        self.assertEqual(seen["rcpt"], [f"<{ALICE}>"])
        # Our Received first, as the milter will see it in the stored message.
        self.assertEqual(seen["headers"][0][0], "Received")
        self.assertIn(seen["queue_id"], seen["headers"][0][1])
        self.assertIn(["Subject", "milter: accept"], seen["headers"])
        self.assertEqual(seen["body_bytes"], len(b"the original body\r\n"))
        self.assertIsNone(seen["auth_authen"])

    def test_reject_with_the_milters_reply_and_with_the_default(self):
        before = len(self.server.messages(ALICE))
        with self.assertRaises(smtplib.SMTPDataError) as e:
            self.send("reject")
        self.assertEqual(e.exception.smtp_code, 550)
        self.assertIn(b"5.7.1 Rejected by the test milter", e.exception.smtp_error)
        with self.assertRaises(smtplib.SMTPDataError) as e:
            self.send("reject_default")
        self.assertEqual(e.exception.smtp_code, 550)
        self.assertIn(b"5.7.1 Command rejected", e.exception.smtp_error)
        self.assertEqual(len(self.server.messages(ALICE)), before)
        lines = [e for e in log_events(self.server, "shardmail::antispam")
                 if e.get("check") == "milter" and e.get("verdict") == "reject"]
        self.assertGreaterEqual(len(lines), 2, lines)

    def test_tempfail(self):
        with self.assertRaises(smtplib.SMTPDataError) as e:
            self.send("tempfail")
        self.assertEqual(e.exception.smtp_code, 451)
        self.assertIn(b"4.7.1 Try later, says the test milter", e.exception.smtp_error)

    def test_discard_accepts_and_stores_nothing(self):
        before = len(self.server.messages(ALICE))
        self.send("discard")  # 250: no error raised
        self.assertEqual(len(self.server.messages(ALICE)), before)
        lines = wait_for(lambda: [e for e in log_events(self.server, "shardmail::delivery")
                                  if e.get("status") == "discarded"], what="a discarded line")
        self.assertTrue(lines[-1]["relay"].startswith("milter:inet:127.0.0.1:"), lines[-1])

    def test_quarantine_goes_to_junk(self):
        self.send("quarantine")
        junk = self.server.messages(ALICE, "Junk")
        self.assertIn(b"Subject: milter: quarantine", junk[-1])
        lines = [e for e in log_events(self.server, "shardmail::antispam") if e.get("check") == "junk"]
        self.assertEqual(lines[-1]["reason"], "milter quarantine: held by the test milter")

    def test_header_changes(self):
        self.send("addheader")
        self.assertIn(b"X-Test-Milter: added\r\n", self.last_stored())
        self.send("insheader")
        stored = self.last_stored()
        # Inserted before every field the milter saw, so above our Received, below
        # the Return-Path and Authentication-Results we add after the milters.
        self.assertLess(stored.index(b"X-Test-First: inserted"), stored.index(b"Received:"))
        self.send("chgheader")
        stored = self.last_stored()
        self.assertIn(b"Subject: milter: changed\r\n", stored)
        self.assertNotIn(b"X-Remove-Me", stored)

    def test_body_replacement(self):
        self.send("replbody")
        stored = self.last_stored()
        self.assertTrue(stored.endswith(b"\r\n\r\nreplaced by the test milter\r\n"), stored[-80:])
        self.assertNotIn(b"the original body", stored)

    def test_submission_is_filtered_with_the_login_as_a_macro(self):
        with smtplib.SMTP("127.0.0.1", self.server.ports["submission"], timeout=30,
                          local_hostname="laptop.example") as s:
            s.starttls(context=tls_context())
            s.login(ALICE, "pw")
            s.sendmail(ALICE, [ALICE], message("addheader").replace(
                "From: sender@remote.example", f"From: {ALICE}"))
        seen = self.milter.seen()[-1]
        self.assertEqual(seen["auth_authen"], ALICE)
        self.assertIn(b"X-Test-Milter: added", self.last_stored())


@unittest.skipUnless(HAVE_MILTER, "needs Debian's python3-milter (apt-get install python3-milter)")
class MilterFailures(unittest.TestCase):
    """A milter that is down or too slow: default_action decides, and the shard keeps
    serving everyone else while a conversation waits."""

    @classmethod
    def setUpClass(cls):
        cls.milter = TestMilterProcess()

    @classmethod
    def tearDownClass(cls):
        cls.milter.stop()

    def server(self, setting):
        server = Server(shards=1, settings={"milter.servers": setting})
        server.add_user(ALICE, "pw")
        server.start()
        self.addCleanup(server.stop)
        return server

    def test_a_dead_milter_tempfails_by_default_and_accepts_when_told(self):
        dead = free_port()
        server = self.server(milter_setting(dead, timeout='"1s"'))
        with self.assertRaises(smtplib.SMTPDataError) as e:
            with mx(server) as s:
                s.sendmail("sender@remote.example", [ALICE], message("accept"))
        self.assertEqual(e.exception.smtp_code, 451)
        self.assertIn(b"4.7.1", e.exception.smtp_error)
        errors = [e for e in log_events(server, "shardmail::antispam")
                  if e.get("check") == "milter" and "reason" in e]
        self.assertIn("connect", errors[-1]["reason"])

        lenient = self.server(milter_setting(dead, timeout='"1s"', default_action='"accept"'))
        with mx(lenient) as s:
            s.sendmail("sender@remote.example", [ALICE], message("accept"))
        self.assertEqual(len(lenient.messages(ALICE)), 1)

    def test_a_slow_milter_times_out_while_a_bystander_is_served(self):
        server = self.server(milter_setting(self.milter.port, timeout='"1s"'))
        outcome = {}

        def slow_client():
            started = time.time()
            try:
                with mx(server) as s:
                    s.sendmail("sender@remote.example", [ALICE], message("slow"))
                outcome["code"] = 250
            except smtplib.SMTPDataError as e:
                outcome["code"] = e.smtp_code
            outcome["seconds"] = time.time() - started

        t = threading.Thread(target=slow_client)
        t.start()
        # Wait until the milter has the slow message, then talk to the same (single)
        # shard: it must answer at once.
        wait_for(lambda: any(s.get("action") == "slow" for s in self.milter.seen()),
                 timeout=10, what="the slow conversation")
        started = time.time()
        with mx(server) as s:
            self.assertEqual(s.noop()[0], 250)
        bystander = time.time() - started
        t.join(30)
        self.assertEqual(outcome.get("code"), 451, outcome)
        self.assertLess(outcome["seconds"], 4.5, outcome)
        self.assertLess(bystander, 0.5, f"the bystander waited {bystander:.2f}s")
        self.assertEqual(server.messages(ALICE), [], "a 451 stores nothing")

    def test_hostile_milter_bytes_are_a_failure_not_a_crash(self):
        port = free_port()
        listener = socket.socket()
        listener.bind(("127.0.0.1", port))
        listener.listen(4)

        def hostile():
            conn, _ = listener.accept()
            conn.recv(1000)
            conn.sendall(b"\xff\xff\xff\xffO")  # a 4 GiB packet
            time.sleep(1)
            conn.close()

        t = threading.Thread(target=hostile, daemon=True)
        t.start()
        server = self.server(milter_setting(port, timeout='"2s"'))
        with self.assertRaises(smtplib.SMTPDataError) as e:
            with mx(server) as s:
                s.sendmail("sender@remote.example", [ALICE], message("accept"))
        self.assertEqual(e.exception.smtp_code, 451)
        listener.close()
        errors = [e for e in log_events(server, "shardmail::antispam") if e.get("check") == "milter"]
        self.assertIn("packet length", errors[-1]["reason"])
        with mx(server) as s:  # still serving
            self.assertEqual(s.noop()[0], 250)


GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


class RspamdProcess:
    """Debian's rspamd on loopback: its milter proxy scanning by itself (no normal
    worker), the controller on another port, DNS pointed at a dead local port so
    network checks fail fast, its own directories. Stopped by process id."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="rspamd-")
        self.port, controller = free_port(), free_port()
        local = os.path.join(self.dir, "local.d")
        for d in ("local.d", "db", "run", "log"):
            os.makedirs(os.path.join(self.dir, d), exist_ok=True)
        files = {
            "worker-proxy.inc": f'bind_socket = "127.0.0.1:{self.port}";\nmilter = yes;\n'
                                'timeout = 60s;\ncount = 1;\n'
                                'upstream "local" { default = yes; self_scan = yes; }\n',
            "worker-normal.inc": "enabled = false;\n",
            "worker-controller.inc": f'bind_socket = "127.0.0.1:{controller}";\ncount = 1;\n',
            "worker-fuzzy.inc": "enabled = false;\n",
            "options.inc": 'dns { nameserver = ["127.0.0.1:9"]; timeout = 0.3s; retransmits = 1; }\n',
            "logging.inc": f'type = "file";\nfilename = "{self.dir}/log/rspamd.log";\nlevel = "info";\n',
            "milter_headers.conf": 'use = ["x-spamd-result", "x-rspamd-server", "x-rspamd-queue-id"];\n'
                                   "skip_local = false;\nskip_authenticated = false;\n",
        }
        for name, text in files.items():
            with open(os.path.join(local, name), "w") as f:
                f.write(text)
        args = [RSPAMD, "-f", "-i", "-c", "/etc/rspamd/rspamd.conf"]
        for var, sub in (("LOCAL_CONFDIR", ""), ("DBDIR", "db"), ("RUNDIR", "run"), ("LOGDIR", "log")):
            args.append(f"--var={var}={os.path.join(self.dir, sub).rstrip('/')}")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port, self.proc, 120)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@unittest.skipUnless(RSPAMD, "needs Debian's rspamd (apt-get install rspamd)")
class Rspamd(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.rspamd = RspamdProcess()
        cls.server = filtered_server(cls.rspamd, timeout='"30s"')

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.rspamd.stop()

    def test_gtube_is_rejected(self):
        body = (f"From: sender@remote.example\r\nTo: {ALICE}\r\nSubject: test\r\n"
                f"Message-ID: <gtube@remote.example>\r\n\r\n{GTUBE}\r\n")
        with self.assertRaises(smtplib.SMTPDataError) as e:
            with mx(self.server) as s:
                s.sendmail("sender@remote.example", [ALICE], body)
        self.assertEqual(e.exception.smtp_code // 100, 5, e.exception)
        self.assertIn(b"5.7.1", e.exception.smtp_error)

    def test_a_clean_message_is_delivered_with_rspamds_headers(self):
        body = (f"From: sender@remote.example\r\nTo: {ALICE}\r\nSubject: lunch\r\n"
                f"Date: Tue, 1 Dec 2026 12:00:00 +0000\r\nMessage-ID: <clean@remote.example>\r\n\r\n"
                "Shall we meet at noon?\r\n")
        with mx(self.server) as s:
            s.sendmail("sender@remote.example", [ALICE], body)
        stored = self.server.messages(ALICE)[-1]
        self.assertIn(b"X-Spamd-Result:", stored)
        self.assertIn(b"X-Rspamd-Server:", stored)
        self.assertIn(b"Shall we meet at noon?", stored)


if __name__ == "__main__":
    unittest.main()
