"""Starts the real shardmail binary on loopback for end-to-end tests.

Each Server gets its own data directory and free ports; tests talk to it with
Python's smtplib (a client this project did not write) and check what was stored
with `shardmail export`. Every wait here is bounded.
"""
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time

BIN = os.environ.get("SHARDMAIL_BIN", "target/debug/shardmail")
DOMAIN = "example.test"


_HANDED_OUT = set()


def free_port():
    """A port nothing listens on now, and never one this process handed out before
    (servers built before any of them starts would otherwise collide)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the server's first-start self-signed certificate
    return ctx


def partition_of(account, partitions):
    """Same mapping as store::partition_of (splitmix64 finaliser)."""
    m = (1 << 64) - 1
    z = (account + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    z ^= z >> 31
    return z % partitions


class Server:
    def imaps(self, user, password="pw"):
        """An imaplib session over implicit TLS, logged in as `user`."""
        import imaplib

        m = imaplib.IMAP4_SSL("127.0.0.1", self.ports["imaps"], ssl_context=tls_context(), timeout=20)
        typ, data = m.login(user, password)
        assert typ == "OK", data
        return m

    def send(self, sender, recipients, message):
        """One SMTP transaction on the MX port (smtplib)."""
        import smtplib

        with smtplib.SMTP("127.0.0.1", self.ports["smtp"], timeout=20) as s:
            s.sendmail(sender, recipients, message)

    def __init__(self, shards=2, settings=None, data_dir=None):
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="shardmail-e2e-")
        self.ports = {k: free_port() for k in ("smtp", "submission", "submissions", "pop3", "pop3s", "imap", "imaps")}
        self.shards = shards
        self.settings = {
            "server.shards": str(shards),
            "server.hostname": "mx.example.test",
            "domains.local": f'["{DOMAIN}"]',
            "listen.smtp": f'"127.0.0.1:{self.ports["smtp"]}"',
            "listen.submission": f'"127.0.0.1:{self.ports["submission"]}"',
            "listen.submissions": f'"127.0.0.1:{self.ports["submissions"]}"',
            "listen.imap": f'"127.0.0.1:{self.ports["imap"]}"',
            "listen.imaps": f'"127.0.0.1:{self.ports["imaps"]}"',
            "listen.pop3": f'"127.0.0.1:{self.ports["pop3"]}"',
            "listen.pop3s": f'"127.0.0.1:{self.ports["pop3s"]}"',
            "limits.auth_failure_delay_ms": "300",
        }
        self.settings.update(settings or {})
        self.proc = None
        self.log_path = os.path.join(self.data_dir, "server.log")
        # A command prefix for the server process (e.g. prlimit); the pid is the
        # server's own, since such wrappers exec it.
        self.start_with = []
        # A --config file (tests of reload edit it); --set settings still win over it.
        self.config_file = None

    def args(self):
        out = ["--data-dir", self.data_dir]
        if self.config_file:
            out += ["--config", self.config_file]
        for k, v in self.settings.items():
            out += ["--set", f"{k}={v}"]
        return out

    def cli(self, *args, stdin=None, check=True):
        return subprocess.run([BIN, *self.args(), *args], input=stdin, capture_output=True,
                              text=True, timeout=60, check=check)

    def add_user(self, email, password="secret"):
        self.cli("user", "add", email, "--password-stdin", stdin=password + "\n")

    def account_id(self, email):
        with open(os.path.join(self.data_dir, "users.json")) as f:
            return json.load(f)["users"][email]["id"]

    def shard_of_user(self, email, partitions=64):
        return partition_of(self.account_id(email), partitions) % self.shards

    def users_on_every_shard(self, prefix, password="pw"):
        """Adds accounts until one is owned by each shard; returns one per shard, so a
        test exercises both the local path and the hand-off to another shard."""
        users, shards_seen = [], set()
        for i in range(40):
            email = f"{prefix}{i}@{DOMAIN}"
            self.add_user(email, password)
            shard = self.shard_of_user(email)
            if shard not in shards_seen:
                shards_seen.add(shard)
                users.append(email)
            if len(shards_seen) == self.shards:
                break
        return users

    def start(self):
        # This run's part of the log starts here (the file is appended across restarts).
        log_offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*self.start_with, BIN, *self.args(), "serve"],
                                     stdout=self.log, stderr=self.log)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.log.close()
                self.proc = None
                raise RuntimeError(f"server exited: {self.read_log()}")
            # Every shard binds every listener (SO_REUSEPORT) and a connection can be
            # refused while one of them is bound but not yet listening: wait for the
            # server's own word that all are listening, then check the addresses.
            with open(self.log_path, "rb") as f:
                f.seek(log_offset)
                ready = b"ready: every shard is listening" in f.read()
            try:
                if ready:
                    for address in self.listen_addresses():
                        with socket.create_connection(address, timeout=1):
                            pass
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not start listening within 30 s")

    def listen_addresses(self):
        out = [self.smtp_address()]
        for key, port in self.ports.items():
            if f"127.0.0.1:{port}" in self.settings.get(f"listen.{key}", ""):
                out.append(("127.0.0.1", port))
        return out

    def smtp_address(self):
        """Where listen.smtp is (tests may move it off 127.0.0.1)."""
        host, port = self.settings["listen.smtp"].strip('"').rsplit(":", 1)
        return host, int(port)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc is None:
            return None
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            self.log.close()
        self.proc = None
        return code

    def kill(self):
        return self.stop(signal.SIGKILL)

    def read_log_all(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def read_log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")[-4000:]

    def export(self, email):
        out = tempfile.mkdtemp(prefix="shardmail-export-")
        self.cli("export", email, "--out", out)
        return out

    def messages(self, email, mailbox="INBOX"):
        """Stored messages of a mailbox, in UID order, as bytes."""
        out = self.export(email)
        cur = os.path.join(out, mailbox, "cur")
        names = sorted(os.listdir(cur), key=lambda n: int(n.split("_")[1].split(".")[0]))
        result = []
        for n in names:
            with open(os.path.join(cur, n), "rb") as f:
                result.append(f.read())
        return result


def wait_for(predicate, timeout=30, what="condition"):
    """The first truthy value of `predicate()`, polled for at most `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def log_events(server, target):
    """The server's text log lines of `target` (`shardmail::delivery`, …) as dicts of
    their key=value fields, in order; quoted values unescaped."""
    out = []
    for line in server.read_log_all().splitlines():
        if f" {target}: " not in line:
            continue
        fields = {}
        for key, value in _FIELD.findall(line.split(f" {target}: ", 1)[1]):
            if value.startswith('"'):
                try:
                    value = json.loads(value)
                except ValueError:
                    value = value[1:-1]
            fields[key] = value
        out.append(fields)
    return out


def log_bytes(data_dir):
    """Bytes of every partition's messages.log under a data directory."""
    total = 0
    for root, _, files in os.walk(os.path.join(data_dir, "partitions")):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files
                     if f == "messages.log")
    return total


def strip_received(stored):
    """The message as the client sent it: our Return-Path: (final delivery) and
    Received: headers removed."""
    if stored.startswith(b"Return-Path: "):
        stored = stored[stored.index(b"\r\n") + 2:]
    assert stored.startswith(b"Received: "), stored[:80]
    end = stored.index(b"\r\n", stored.index(b"+0000")) + 2
    return stored[end:]


HAVE_DNSMASQ = bool(shutil.which("dnsmasq")) or os.path.exists("/usr/sbin/dnsmasq")


def start_dnsmasq(port, txt, hosts, dead_zone, extra=()):
    """A DNS server on 127.0.0.1:port answering only for *.test (NXDOMAIN otherwise);
    `dead_zone` is forwarded to a dead server, so lookups there fail temporarily."""
    args = [
        shutil.which("dnsmasq") or "/usr/sbin/dnsmasq",
        "--keep-in-foreground", "--no-daemon", "--conf-file=/dev/null",
        f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces",
        "--no-resolv", "--no-hosts", "--local=/test/", "--pid-file=", "--user=root",
        f"--server=/{dead_zone}/127.0.0.1#9",
    ]
    args += [f"--txt-record={name},{value}" for name, value in txt]
    args += [f"--host-record={name},{ip}" for name, ip in hosts]
    args += list(extra)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.3)
    if proc.poll() is not None:
        raise RuntimeError("dnsmasq failed: " + proc.stderr.read().decode())
    return proc
