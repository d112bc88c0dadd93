"""Reloading a running server (SIGHUP, `shardmail reload`, a renewed certificate file)
with real clients connected: imaplib sessions in IDLE, an smtplib sender, and a
transaction that spans the reload. Nothing may be dropped, new sessions must see the
new settings, a bad configuration must change nothing."""
import hashlib
import imaplib
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest

from harness import DOMAIN, Server, tls_context, wait_for

USER = f"reload@{DOMAIN}"
PASSWORD = "pw"


def message(i):
    return (f"From: s@remote.test\r\nTo: {USER}\r\nSubject: load {i}\r\n"
            f"Message-ID: <load{i}@remote.test>\r\n\r\nbody {i}\r\n")


def ehlo_size(port):
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo("client.test")
        return int(s.esmtp_features.get("size", "0"))


def read_status(server):
    path = os.path.join(server.data_dir, "reload.status")
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def cert_fingerprint(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with tls_context().wrap_socket(raw, server_hostname="mx.example.test") as tls:
            return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


def make_cert(directory, name):
    """A self-signed pair from openssl, written the way an ACME client renews: the
    new files are renamed over the old ones."""
    key, cert = os.path.join(directory, f"{name}.key"), os.path.join(directory, f"{name}.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    "/CN=mx.example.test", "-keyout", key, "-out", cert],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class Reload(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="shardmail-reload-")
        self.config = os.path.join(self.dir, "shardmail.toml")
        self.write_config('message_size_max = "10MiB"')
        self.server = Server()
        self.server.config_file = self.config
        self.server.add_user(USER, PASSWORD)

    def tearDown(self):
        self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def write_config(self, limits, extra=""):
        # Written to a new file and renamed, as editors and config managers do.
        staged = self.config + ".new"
        with open(staged, "w") as f:
            f.write(f"[limits]\n{limits}\n{extra}\n")
        os.replace(staged, self.config)

    def reload(self, check=True):
        return self.server.cli("reload", check=check)

    def test_reload_under_load_drops_no_session(self):
        self.server.start()
        smtp_port = self.server.ports["smtp"]
        self.assertEqual(ehlo_size(smtp_port), 10 << 20)
        idlers = []
        for _ in range(8):
            m = self.server.imaps(USER, PASSWORD)
            m.select("INBOX")
            tag = m._new_tag().decode()
            m.send(f"{tag} IDLE\r\n".encode())
            self.assertTrue(m.readline().startswith(b"+"))
            idlers.append((m, tag))
        plain = [self.server.imaps(USER, PASSWORD) for _ in range(8)]
        # A transaction that spans the reload: begun before, finished after.
        spanning = smtplib.SMTP("127.0.0.1", smtp_port, timeout=20)
        spanning.ehlo("client.test")
        spanning.mail("s@remote.test")
        errors, sent = [], []
        stop = threading.Event()

        def sender():
            i = 0
            while not stop.is_set() and i < 400:
                try:
                    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=20) as s:
                        s.sendmail("s@remote.test", [USER], message(i))
                    sent.append(i)
                except Exception as e:  # any failure is the test's failure
                    errors.append(repr(e))
                i += 1
                time.sleep(0.01)

        thread = threading.Thread(target=sender)
        thread.start()
        try:
            time.sleep(0.5)
            self.write_config('message_size_max = "5MiB"\nrecipients_max = 10',
                              '[log]\nlevel = "debug"\n[listen]\nbacklog = 100\n')
            out = self.reload().stdout
            self.assertIn("limits.message_size_max", out)
            self.assertIn("limits.recipients_max", out)
            self.assertIn("log.level", out)
            # A restart-only key is named, and keeps its running value.
            self.assertIn("needs a restart: listen.backlog", out)
            time.sleep(0.5)
        finally:
            stop.set()
            thread.join(timeout=60)
        self.assertEqual(errors, [])
        self.assertGreater(len(sent), 10)
        # New sessions get the new limit; the old transaction still completes.
        self.assertEqual(ehlo_size(smtp_port), 5 << 20)
        spanning.rcpt(USER)
        code, _ = spanning.data(message(9999).encode())
        self.assertEqual(code, 250)
        spanning.quit()
        # Every IDLE session is alive and was told of the mail that came meanwhile.
        for m, tag in idlers:
            line = m.readline()
            self.assertRegex(line, rb"^\* \d+ EXISTS", line)
            m.send(b"DONE\r\n")
            while True:
                line = m.readline()
                self.assertTrue(line, "connection closed during IDLE")
                if line.startswith(tag.encode()):
                    self.assertIn(b"OK", line)
                    break
            m.logout()
        for m in plain:
            self.assertEqual(m.noop()[0], "OK")
            m.logout()
        m = self.server.imaps(USER, PASSWORD)
        typ, data = m.select("INBOX", readonly=True)
        self.assertEqual(int(data[0]), len(sent) + 1)
        m.logout()
        log = self.server.read_log_all()
        self.assertIn("configuration reloaded", log)
        self.assertIn("restart_needed=listen.backlog", log)
        # log.level took effect at once: a failed handshake is a debug line.
        with socket.create_connection(("127.0.0.1", self.server.ports["imaps"]), timeout=10) as s:
            s.sendall(b"not a TLS hello\r\n" * 4)
            s.recv(100)
        wait_for(lambda: "implicit TLS handshake failed" in self.server.read_log_all(), 10,
                 "a debug line after log.level = debug")

    def test_refused_reload_changes_nothing(self):
        self.server.start()
        port = self.server.ports["smtp"]
        self.write_config("message_size_max = true")
        self.server.proc.send_signal(signal.SIGHUP)
        status = wait_for(lambda: read_status(self.server), 20, "reload.status")
        self.assertIn("result=refused", status)
        self.assertIn("limits.message_size_max", status)
        self.assertIsNone(self.server.proc.poll())
        self.assertEqual(ehlo_size(port), 10 << 20)
        self.assertIn("configuration reload refused", self.server.read_log_all())
        # The command checks the file itself first and does not signal.
        result = self.reload(check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("not reloading", result.stderr)
        self.assertIn("limits.message_size_max", result.stderr)
        # A certificate that cannot be read is refused by the server.
        self.write_config('message_size_max = "1MiB"',
                          f'[tls]\ncert = "{self.dir}/missing.pem"\nkey = "{self.dir}/missing.key"\n')
        result = self.reload(check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("tls.cert", result.stderr)
        # The same refusal again is reported as a new outcome, at once.
        started = time.time()
        again = self.reload(check=False)
        self.assertNotEqual(again.returncode, 0)
        self.assertIn("tls.cert", again.stderr)
        self.assertLess(time.time() - started, 10)
        self.assertEqual(ehlo_size(port), 10 << 20)

    def test_reload_without_a_server_says_so(self):
        result = self.reload(check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("no shardmail is serving", result.stderr)

    @unittest.skipUnless(shutil.which("openssl"), "needs the openssl command")
    def test_renewed_certificate_is_used_by_new_handshakes(self):
        cert, key = make_cert(self.dir, "live")
        self.write_config('message_size_max = "10MiB"',
                          f'[tls]\ncert = "{cert}"\nkey = "{key}"\nwatch_interval_secs = 1\n')
        self.server.start()
        imaps = self.server.ports["imaps"]
        before = cert_fingerprint(imaps)
        session = self.server.imaps(USER, PASSWORD)
        new_cert, new_key = make_cert(self.dir, "renewed")
        # Key first, then the certificate, a second apart: in between the pair does
        # not match, and the old certificate must keep serving.
        os.replace(new_key, key)
        time.sleep(1.5)
        self.assertEqual(cert_fingerprint(imaps), before)
        os.replace(new_cert, cert)
        after = wait_for(lambda: (f := cert_fingerprint(imaps)) != before and f, 15,
                         "the renewed certificate")
        with open(cert, "rb") as f:
            renewed = ssl.PEM_cert_to_DER_cert(f.read().decode())
        self.assertEqual(after, hashlib.sha256(renewed).hexdigest())
        self.assertEqual(session.noop()[0], "OK")
        session.logout()
        log = self.server.read_log_all()
        self.assertIn("TLS certificate changed on disk", log)
        self.assertIn("do not load", log)

    def test_service_manager_hears_reloading_then_ready(self):
        path = os.path.join(self.dir, "notify.sock")
        manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        manager.bind(path)
        manager.settimeout(30)
        os.environ["NOTIFY_SOCKET"] = path
        try:
            self.server.start()
        finally:
            del os.environ["NOTIFY_SOCKET"]
        try:
            self.assertTrue(manager.recv(4096).startswith(b"READY=1\n"))
            self.server.proc.send_signal(signal.SIGHUP)
            reloading = manager.recv(4096)
            self.assertTrue(reloading.startswith(b"RELOADING=1\nMONOTONIC_USEC="), reloading)
            self.assertTrue(manager.recv(4096).startswith(b"READY=1\n"))
        finally:
            manager.close()


if __name__ == "__main__":
    unittest.main()
