"""Helpers for the abuse suite: hostile clients, bystander probes, server memory.

A bystander is a second, well-behaved session on the same shard as the attacker; its
latency is measured before and during the attack, in the same run, and compared as a
ratio. Every loop here is bounded in count and time.
"""
import imaplib
import socket
import ssl
import statistics
import time

from harness import tls_context


def rss_kib(pid):
    """Resident memory of a process, KiB (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Imaps(imaplib.IMAP4_SSL):
    """imaplib over implicit TLS, optionally from a chosen source address."""

    def __init__(self, port, source=None, timeout=30):
        self._source = source
        super().__init__("127.0.0.1", port, ssl_context=tls_context(), timeout=timeout)

    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self._source, 0) if self._source else None)
        return self.ssl_context.wrap_socket(sock, server_hostname=None)


def median_ms(samples):
    return statistics.median(samples) * 1000


def noop_latency(imap, count=30, pause=0.01, deadline=None):
    """Median NOOP round trip (s samples) of a logged-in imaplib session."""
    samples = []
    for _ in range(count):
        if deadline and time.time() > deadline:
            break
        t = time.perf_counter()
        typ, _ = imap.noop()
        samples.append(time.perf_counter() - t)
        assert typ == "OK"
        time.sleep(pause)
    return samples


def greeting_latency(port, count=20, pause=0.01):
    """Connect → 220 greeting round trips on an SMTP port."""
    samples = []
    for _ in range(count):
        t = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            line = s.recv(512)
            samples.append(time.perf_counter() - t)
            assert line.startswith(b"220 "), line
        time.sleep(pause)
    return samples


def raw(port, tls=False, timeout=10, source=None):
    """A raw client socket (TLS if asked) with a read helper."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                    source_address=(source, 0) if source else None)
    if tls:
        sock = tls_context().wrap_socket(sock)
    return sock


def read_line(sock, limit=65536):
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def read_until(sock, marker, limit=1 << 24, timeout=30):
    data = b""
    deadline = time.time() + timeout
    while marker not in data and len(data) < limit and time.time() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data
