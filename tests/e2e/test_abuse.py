"""The abuse suite (issue 11): each numbered attack of the issue against the real
server, checking the reply the attacker gets and that a bystander on the same shard
is still served. Figures of stalls and memory are printed (their benchmark is
`shardmail-load abuse`, see loadtest/); assertions here are about behaviour and
generous bounds, never about how fast this host is.
"""
import imaplib
import json
import multiprocessing
import os
import resource
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
import unittest

from abuse import (Imaps, greeting_latency, median_ms, noop_latency, raw, read_line,
                   read_until, rss_kib)
from harness import DOMAIN, Server, log_events, tls_context

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"


def open_files_allowed():
    """Raises this process's open-file limit to its hard limit; returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def deliver_many(server, rcpt, count, size=600, connections=8):
    """`count` small messages to `rcpt` over SMTP, pipelined on several connections."""
    body = b"Subject: m\r\n\r\n" + b"needle " * (size // 7) + b"\r\n"

    def sender(n):
        with smtplib.SMTP(*server.smtp_address(), timeout=60) as s:
            for i in range(n):
                s.sendmail("bulk@remote.example", [rcpt], body)

    per = count // connections
    threads = [threading.Thread(target=sender, args=(per,)) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return per * connections


def during(make_attack, probe, seconds=3.0):
    """Runs an attack over and over in a forked child process (so the attacker and
    the probe do not share an interpreter lock) for `seconds` while `probe()`
    measures here; returns the probe's samples and the attack rounds completed.
    `make_attack()` runs in the child and returns the attack (its own session)."""
    ctx = multiprocessing.get_context("fork")
    rounds = ctx.Value("i", 0)
    failed = ctx.Value("i", 0)
    stop = ctx.Event()

    def loop():
        deadline = time.time() + 120
        try:
            attack = make_attack()
            while not stop.is_set() and time.time() < deadline:
                attack()
                with rounds.get_lock():
                    rounds.value += 1
        except Exception:
            failed.value = 1
            raise

    child = ctx.Process(target=loop)
    child.start()
    time.sleep(0.3)
    try:
        samples = probe()
    finally:
        time.sleep(max(0.0, seconds - 0.3))
        stop.set()
        child.join(timeout=120)
        if child.is_alive():
            child.kill()
    if failed.value:
        raise AssertionError("the attack itself failed (see the child's traceback above)")
    return samples, rounds.value


class Bystanders(unittest.TestCase):
    """1. Long work yields: huge LIST, SEARCH, FETCH do not freeze their shard."""

    @classmethod
    def setUpClass(cls):
        cls.server = Server(settings={
            "store.durability": '"none"',  # seeding speed only; nothing here is about durability
            "limits.mailboxes_per_account_max": "20000",
        })
        cls.server.add_user(ALICE, "pw")
        cls.server.start()
        cls.seeded = deliver_many(cls.server, ALICE, 20_000)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def session(self):
        m = Imaps(self.server.ports["imaps"])
        m.login(ALICE, "pw")
        return m

    def assert_bystander_served(self, name, make_attack, seconds=3.0):
        """NOOP on another session of the attacker's shard and SMTP greetings, before
        and during `attack`: medians compared as ratios (printed), bounded."""
        bystander = self.session()
        bystander.select("Sent")
        smtp = self.server.smtp_address()[1]
        base_noop = median_ms(noop_latency(bystander))
        base_greet = median_ms(greeting_latency(smtp))

        def probe():
            return noop_latency(bystander, count=40), greeting_latency(smtp, count=20)

        (noop, greet), rounds = during(make_attack, probe, seconds)
        ratio_noop = median_ms(noop) / base_noop
        ratio_greet = median_ms(greet) / base_greet
        print(f"\n  {name}: {rounds} attack rounds; bystander NOOP {base_noop:.2f} -> "
              f"{median_ms(noop):.2f} ms (x{ratio_noop:.1f}), SMTP greeting {base_greet:.2f} -> "
              f"{median_ms(greet):.2f} ms (x{ratio_greet:.1f})")
        self.assertGreater(rounds, 0)
        # Before issue 11 these probes waited for minutes. The 10x target is measured
        # on the release build (`shardmail-load abuse`); a debug build on a shared
        # 2-core host gets a looser bound so the suite cannot flake.
        self.assertLess(max(noop), 2.0, "a NOOP waited for seconds behind the attack")
        self.assertLess(max(greet), 2.0, "an SMTP greeting waited for seconds")
        bystander.logout()

    def test_pathological_list_pattern(self):
        m = self.session()
        name = "a" * 254 + "c"
        typ, _ = m.create(name)
        self.assertEqual(typ, "OK")
        pattern = '"' + "*a" * 16 + '*b"'
        started = time.perf_counter()
        typ, _ = m.list('""', pattern)
        took = time.perf_counter() - started
        print(f"\n  LIST with 17 wildcards over a 255-byte name: {took * 1000:.1f} ms")
        self.assertEqual(typ, "OK")
        self.assertLess(took, 2.0)  # was minutes: the matcher backtracked

        def make_attack():
            attacker = self.session()

            def attack():
                typ, data = attacker.list('""', pattern)
                assert typ == "OK", data
            return attack

        self.assert_bystander_served("LIST *a*a…*b", make_attack)
        m.delete(name)
        m.logout()

    def test_list_of_ten_thousand_mailboxes(self):
        attacker = self.session()
        sock = attacker.sock
        # Pipelined CREATEs (the server answers them in order).
        batch = b"".join(b"c%d CREATE many/%05d\r\n" % (i, i) for i in range(10_000))
        sock.sendall(batch)
        got = read_until(sock, b"c9999 OK [MAILBOXID", timeout=300)
        self.assertIn(b"c9999 OK", got)
        attacker.shutdown()

        def make_attack():
            lister = self.session()

            def attack():
                typ, data = lister.list('""', "*")
                assert typ == "OK" and len(data) >= 10_000, len(data)
            return attack

        self.assert_bystander_served("LIST of 10,000 mailboxes", make_attack)

    def test_search_and_fetch_of_a_large_mailbox(self):
        seeded = self.seeded

        def reader():
            m = self.session()
            typ, data = m.select("INBOX", readonly=True)
            assert int(data[0]) >= seeded
            return m

        def make_search():
            m = reader()

            def search():
                typ, data = m.search(None, "TEXT", "needle")
                assert typ == "OK" and len(data[0].split()) >= seeded
            return search

        def make_fetch():
            m = reader()

            def fetch():
                typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER])")
                assert typ == "OK" and len(data) >= seeded
            return fetch

        self.assert_bystander_served(f"SEARCH TEXT over {seeded:,} messages", make_search)
        self.assert_bystander_served(f"FETCH 1:* of {seeded:,} messages", make_fetch)

    def test_sigterm_stops_within_the_drain_window_under_attack(self):
        server = Server(settings={"store.durability": '"none"'})
        server.add_user(ALICE, "pw")
        server.start()
        try:
            deliver_many(server, ALICE, 2000)
            m = Imaps(server.ports["imaps"])
            m.login(ALICE, "pw")
            m.select("INBOX", readonly=True)
            stop = threading.Event()

            def attack():
                while not stop.is_set():
                    try:
                        m.search(None, "TEXT", "needle")
                    except Exception:
                        return

            t = threading.Thread(target=attack)
            t.start()
            time.sleep(0.5)
            started = time.time()
            code = server.stop(timeout=30)
            stop.set()
            t.join(timeout=30)
            self.assertEqual(code, 0)
            self.assertLess(time.time() - started, 15, "SIGTERM took longer than the grace")
        finally:
            server.stop()


class Memory(unittest.TestCase):
    """2. Memory per connection follows configuration, not what the peer sends."""

    @classmethod
    def setUpClass(cls):
        cls.server = Server(settings={"limits.connections_per_ip_max": "5000"})
        cls.server.add_user(ALICE, "pw")
        cls.server.start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def pid(self):
        return self.server.proc.pid

    def test_preauth_literal_is_refused_before_it_is_sent(self):
        before = rss_kib(self.pid())
        socks = []
        for _ in range(20):
            s = raw(self.server.ports["imap"])
            read_line(s)
            s.sendall(b"a LOGIN {52324147}\r\n")
            reply = read_line(s)
            self.assertTrue(reply.startswith(b"a NO [TOOBIG]"), reply)
            self.assertIn(b"limits.preauth_literal_bytes_max", reply)
            socks.append(s)
        grown = rss_kib(self.pid()) - before
        print(f"\n  20 x LOGIN {{52324147}} before login: RSS +{grown} KiB")
        self.assertLess(grown, 20 * 1024)
        for s in socks:
            s.close()

    def warm_logins(self):
        """Logins (argon2id's 19 MiB per blocking thread) before memory is measured."""
        for _ in range(4):
            m = Imaps(self.server.ports["imaps"])
            m.login(ALICE, "pw")
            m.logout()

    def unfinished_uploads(self, count, megabytes, start):
        """`count` connections each send `megabytes` of a body that never ends."""
        socks = []
        chunk = (b"x" * 1022 + b"\r\n") * 1024  # 1 MiB
        for _ in range(count):
            socks.append(start())
        for _ in range(megabytes):
            for s in socks:
                s.sendall(chunk)
        return socks

    def test_unfinished_data_and_append_stay_small(self):
        smtp = self.server.smtp_address()[1]

        def data():
            s = raw(smtp)
            read_line(s)
            s.sendall(b"EHLO x.example\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<" +
                      ALICE.encode() + b">\r\nDATA\r\n")
            got = read_until(s, b"354 ")
            assert b"354 " in got, got
            return s

        def append():
            s = raw(self.server.ports["imaps"], tls=True)
            read_line(s)
            s.sendall(b"a LOGIN " + ALICE.encode() + b" pw\r\n")
            assert b"a OK" in read_until(s, b"a OK")
            s.sendall(b"b APPEND INBOX {47185920}\r\n")
            assert b"+ " in read_until(s, b"+ ")
            return s

        self.warm_logins()
        before = rss_kib(self.pid())
        socks = self.unfinished_uploads(20, 20, data) + self.unfinished_uploads(20, 20, append)
        time.sleep(0.5)
        grown = rss_kib(self.pid()) - before
        print(f"\n  40 unfinished uploads of 20 MiB each (20 DATA, 20 APPEND): RSS +{grown / 1024:.1f} MiB")
        # Held whole, this would be 800 MiB; spooled, each session stages at most
        # store.spool_threshold_bytes (256 KiB) plus its input buffer.
        self.assertLess(grown, 80 * 1024)
        for s in socks:
            s.close()

    def test_reader_that_never_reads_pins_little(self):
        with smtplib.SMTP(*self.server.smtp_address()) as s:
            for i in range(300):
                s.sendmail("a@remote.example", [ALICE], b"Subject: h\r\n\r\n" + b"x" * 2000)
        s = raw(self.server.ports["imaps"], tls=True)
        read_line(s)
        s.sendall(b"a LOGIN " + ALICE.encode() + b" pw\r\na SELECT INBOX\r\n")
        read_until(s, b"a OK [READ-WRITE]")
        # Measured after the login: argon2id's 19 MiB (on the blocking pool, kept by
        # the allocator) is not the connection's.
        before = rss_kib(self.pid())
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"".join(b"f%d FETCH 1:* (BODY.PEEK[HEADER] BODY.PEEK[TEXT])\r\n" % i
                           for i in range(500)))
        time.sleep(2)
        grown = rss_kib(self.pid()) - before
        print(f"\n  500 pipelined FETCH 1:* never read: RSS +{grown} KiB")
        self.assertLess(grown, 16 * 1024)  # was ~30 MiB: limits.output_buffer_bytes_max bounds it
        s.close()

    def test_idle_connections_cost_little(self):
        count = min(2000, open_files_allowed() // 2 - 100)
        for service, greeting in [("smtp", b"220 "), ("imap", b"* OK"), ("pop3", b"+OK")]:
            # A fresh server each: memory freed by one round would hide the next.
            server = Server()
            server.start()
            try:
                port = server.ports[service]
                time.sleep(0.3)
                before = rss_kib(server.proc.pid)
                socks = [raw(port) for _ in range(count)]
                for s in socks:
                    self.assertTrue(read_line(s).startswith(greeting))
                time.sleep(0.3)
                per = (rss_kib(server.proc.pid) - before) * 1024 / count
                print(f"\n  {count} idle {service} connections: {per / 1024:.1f} KiB each")
                self.assertLess(per, 16 * 1024)
                for s in socks:
                    s.close()
            finally:
                server.stop()


def wait_for_events(server, target, count, timeout=10):
    deadline = time.time() + timeout
    while True:
        events = log_events(server, target)
        if len(events) >= count or time.time() > deadline:
            return events
        time.sleep(0.05)


class ConnectionLimits(unittest.TestCase):
    """3. Limits for every protocol, per address, per family, per user, and capacity."""

    def test_per_address_per_family_and_per_user(self):
        server = Server(settings={
            "limits.ip_limit_exempt_networks": "[]",
            "limits.connections_per_ip_max": "6",
            "limits.sessions_per_user_max": "2",
        })
        server.add_user(ALICE, "pw")
        server.start()
        time.sleep(0.5)  # the harness's start-up probe connections are gone
        try:
            held = [raw(server.ports["imap"]) for _ in range(6)]
            for s in held:
                self.assertTrue(read_line(s).startswith(b"* OK"))
            # (The harness's start-up probes may have been refused already.)
            before = len(log_events(server, "shardmail::connection"))
            for port, tls, refusal in [
                (server.smtp_address()[1], False, b"421 4.7.0"),
                (server.ports["imap"], False, b"* BYE [UNAVAILABLE]"),
                (server.ports["imaps"], True, b"* BYE [UNAVAILABLE]"),
                (server.ports["pop3"], False, b"-ERR [SYS/TEMP]"),
            ]:
                s = raw(port, tls=tls)
                line = read_line(s)
                self.assertTrue(line.startswith(refusal), (port, line))
                self.assertIn(b"connections_per_ip_max", line)
                s.close()
            # Each refusal is one line naming the limit.
            refused = wait_for_events(server, "shardmail::connection", before + 4)[before:]
            self.assertEqual([e["service"] for e in refused], ["smtp", "imap", "imaps", "pop3"])
            self.assertTrue(all(e["reason"] == "limits.connections_per_ip_max"
                                and e["ip"] == "127.0.0.1" for e in refused), refused)
            # Another address is not affected (all of 127/8 is this host).
            s = raw(server.smtp_address()[1], source="127.0.0.2")
            self.assertTrue(read_line(s).startswith(b"220 "))
            s.close()
            for s in held:
                s.close()
            time.sleep(0.3)
            # Per user: a third session of one account is refused.
            a, b = Imaps(server.ports["imaps"]), Imaps(server.ports["imaps"])
            a.login(ALICE, "pw")
            b.login(ALICE, "pw")
            c = Imaps(server.ports["imaps"])
            with self.assertRaises(imaplib.IMAP4.error) as e:
                c.login(ALICE, "pw")
            self.assertIn("LIMIT", str(e.exception))
            self.assertIn("sessions_per_user_max", str(e.exception))
            a.logout()
            time.sleep(0.2)
            c2 = Imaps(server.ports["imaps"])
            c2.login(ALICE, "pw")  # a slot was freed
            for m in (b, c2):
                m.logout()
        finally:
            server.stop()

    def test_idle_imap_cannot_starve_inbound_mail(self):
        server = Server(shards=1, settings={"limits.sessions_per_shard_max": "50"})
        server.add_user(ALICE, "pw")
        server.start()
        time.sleep(0.5)  # the harness's start-up probe connections are gone
        try:
            held = [raw(server.ports["imap"]) for _ in range(50)]
            for s in held:
                self.assertTrue(read_line(s).startswith(b"* OK"))
            s = raw(server.ports["imap"])
            self.assertTrue(read_line(s).startswith(b"* BYE [UNAVAILABLE]"))
            s.close()
            # SMTP has its own budget.
            with smtplib.SMTP(*server.smtp_address(), timeout=10) as smtp:
                self.assertEqual(smtp.sendmail("a@remote.example", [ALICE], b"Subject: x\r\n\r\ny\r\n"), {})
            for s in held:
                s.close()
        finally:
            server.stop()

    @unittest.skipUnless(shutil.which("prlimit"), "needs prlimit (util-linux)")
    def test_open_file_limit_gives_replies_not_hangs(self):
        data = tempfile.mkdtemp(prefix="shardmail-nofile-")
        server = Server(shards=1, data_dir=data, settings={
            "server.partitions": "4",
            "queue.connections_max": "10",
        })
        server.add_user(ALICE, "pw")
        # Under a low open-file limit: the capacity is logged, refusals are replies.
        server.start_with = ["prlimit", "--nofile=700:700"]
        server.start()
        try:
            with open(server.log_path, "rb") as f:
                log = f.read().decode(errors="replace")
            self.assertIn("connection capacity", log)
            capacity = int(log.split("connections=")[1].split()[0])
            self.assertLess(capacity, 700)
            socks = []
            replies = []
            for _ in range(capacity + 20):
                s = raw(server.smtp_address()[1], timeout=5)
                socks.append(s)
                replies.append(read_line(s))
            self.assertTrue(all(r.startswith(b"220 ") for r in replies[:capacity - 5]))
            self.assertTrue(all(r.startswith(b"421 4.3.2") for r in replies[-10:]), replies[-10:])
            for s in socks:
                s.close()
            time.sleep(0.5)
            s = raw(server.smtp_address()[1])
            self.assertTrue(read_line(s).startswith(b"220 "))
            s.close()
        finally:
            server.stop()

    def test_backlog_is_configurable_and_checked(self):
        server = Server()
        bad = server.cli("--set", "listen.backlog=1", "check-config", check=False)
        self.assertNotEqual(bad.returncode, 0)
        self.assertIn("listen.backlog", bad.stderr)


class Deadlines(unittest.TestCase):
    """4. Slowloris: whole commands, bodies and logins have deadlines."""

    @classmethod
    def setUpClass(cls):
        cls.server = Server(settings={
            "limits.command_timeout_secs": "2",
            "limits.preauth_timeout_secs": "3",
            "limits.min_data_rate": "500",
            "limits.min_data_rate_grace_secs": "2",
        })
        cls.server.add_user(ALICE, "pw")
        cls.server.start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def trickle(self, sock, data, every=0.5, limit=30):
        """Sends one byte of `data` every `every` s until the server closes; returns
        the seconds it took and what the server said."""
        started = time.time()
        sock.settimeout(every)
        said = b""
        for b in data[: int(limit / every)]:
            try:
                sock.sendall(bytes([b]))
            except OSError:
                break
            try:
                got = sock.recv(4096)
                if not got:
                    break
                said += got
            except socket.timeout:
                pass
        return time.time() - started, said

    def test_command_line_trickle(self):
        s = raw(self.server.smtp_address()[1])
        read_line(s)
        took, said = self.trickle(s, b"EHLO " + b"x" * 200)
        print(f"\n  command line trickled a byte per 0.5 s: closed after {took:.1f} s")
        self.assertLess(took, 8)
        self.assertIn(b"421 4.4.2", said)

    def test_data_trickle(self):
        s = raw(self.server.smtp_address()[1])
        read_line(s)
        s.sendall(b"EHLO x.example\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<" +
                  ALICE.encode() + b">\r\nDATA\r\n")
        read_until(s, b"354 ")
        took, said = self.trickle(s, b"y" * 100)
        print(f"\n  DATA trickled: closed after {took:.1f} s (limits.min_data_rate)")
        self.assertLess(took, 8)
        self.assertIn(b"421 4.4.2", said)

    def test_literal_trickle_and_preauth(self):
        s = raw(self.server.ports["imaps"], tls=True)
        read_line(s)
        s.sendall(b"a LOGIN " + ALICE.encode() + b" pw\r\nb APPEND INBOX {1000}\r\n")
        read_until(s, b"+ ")
        took, said = self.trickle(s, b"z" * 100)
        self.assertLess(took, 8)
        self.assertIn(b"BYE", said)
        # Not logged in: gone after limits.preauth_timeout_secs however chatty.
        s = raw(self.server.ports["imap"])
        read_line(s)
        started = time.time()
        said = b""
        while time.time() - started < 20:
            try:
                s.sendall(b"n NOOP\r\n")
                got = s.recv(4096)
            except OSError:
                break
            if not got:
                break
            said += got
            time.sleep(0.2)
        took = time.time() - started
        print(f"\n  pre-login NOOPs: closed after {took:.1f} s (limits.preauth_timeout_secs=3)")
        self.assertLess(took, 8)
        self.assertIn(b"* BYE", said)
        # A bystander logged in meanwhile is unaffected.
        m = Imaps(self.server.ports["imaps"])
        m.login(ALICE, "pw")
        self.assertEqual(m.noop()[0], "OK")
        m.logout()


class PasswordGuessing(unittest.TestCase):
    """5. Guessing is throttled across connections; others' logins stay fast."""

    def test_parallel_guessing_is_throttled(self):
        server = Server(settings={
            "limits.ip_limit_exempt_networks": "[]",
            "limits.connections_per_ip_max": "500",
            "limits.auth_failures_max": "1000",
        })
        server.add_user(ALICE, "pw")
        server.add_user(BOB, "bobpw")
        server.start()
        try:
            def login_ms():
                t = time.perf_counter()
                m = Imaps(server.ports["imaps"], source="127.0.0.2")
                m.login(BOB, "bobpw")
                took = time.perf_counter() - t
                m.logout()
                return took

            base = median_ms([login_ms() for _ in range(5)])
            verified, throttled = [0], [0]
            stop = threading.Event()
            lock = threading.Lock()

            def guesser():
                try:
                    s = raw(server.ports["imap"])
                    read_line(s)
                    s.sendall(b"s STARTTLS\r\n")
                    read_line(s)
                    s = tls_context().wrap_socket(s)
                    n = 0
                    while not stop.is_set():
                        n += 1
                        s.sendall(b"g%d LOGIN %s guess%d\r\n" % (n, ALICE.encode(), n))
                        line = read_line(s)
                        with lock:
                            if b"AUTHENTICATIONFAILED" in line:
                                verified[0] += 1
                            elif b"Too many failed logins" in line:
                                throttled[0] += 1
                        if not line:
                            return
                except OSError:
                    return

            threads = [threading.Thread(target=guesser) for _ in range(100)]
            for t in threads:
                t.start()
            time.sleep(3)
            v0 = verified[0]
            under_attack = median_ms([login_ms() for _ in range(5)])
            time.sleep(10)
            v1 = verified[0]
            stop.set()
            for t in threads:
                t.join(timeout=30)
            rate = (v1 - v0) / (10 + 5 * under_attack / 1000)
            print(f"\n  100 parallel guessers: {v1} passwords checked, {throttled[0]} refused "
                  f"unchecked; sustained {rate:.2f} checked/s; bob's login {base:.0f} -> "
                  f"{under_attack:.0f} ms (x{under_attack / base:.1f})")
            self.assertLessEqual(rate, 1.0)
            self.assertGreater(throttled[0], 100)
            self.assertLess(under_attack, 3 * base + 50)
            # The attacked account's owner, from a clean address, still logs in.
            m = Imaps(server.ports["imaps"], source="127.0.0.3")
            m.login(ALICE, "pw")
            m.logout()
        finally:
            server.stop()


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("mount"), "needs root to mount a tmpfs")
class LoginLog(unittest.TestCase):
    """5b. Every login attempt is one log line; the shipped fail2ban filter bans on the
    failed ones (checked with Debian's fail2ban-regex), whatever the user name holds."""

    def test_fail2ban_filter_matches_failed_logins_only(self):
        fail2ban_regex = shutil.which("fail2ban-regex")
        if fail2ban_regex is None:
            self.skipTest("fail2ban-regex not installed (.ci/run installs Debian's fail2ban)")
        server = Server(settings={"limits.auth_failures_max": "100"})
        server.add_user(ALICE, "pw")
        server.start()
        try:
            for password in ("wrong1", "wrong2"):
                m = Imaps(server.ports["imaps"])
                with self.assertRaises(imaplib.IMAP4.error):
                    m.login(ALICE, password)
                m.shutdown()
            m = Imaps(server.ports["imaps"])
            m.login(ALICE, "pw")
            m.logout()
            # SMTP AUTH with a user name that tries to forge another address and a
            # success into the line: it is printed escaped, and banned as what it is.
            with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as s:
                s.starttls(context=tls_context())
                with self.assertRaises(smtplib.SMTPAuthenticationError):
                    s.login('x" ip=192.0.2.9 result="ok', "guess")
        finally:
            server.stop()
        lines = [l for l in server.read_log_all().splitlines() if "shardmail::login" in l]
        # smtplib tries PLAIN, then LOGIN: two failed SMTP attempts.
        self.assertEqual(len(lines), 5, lines)
        self.assertEqual(sum(l.endswith('result="failed"') for l in lines), 4, lines)
        self.assertEqual(sum('result="ok" credential=' in l for l in lines), 1, lines)
        filter_path = os.path.join(os.path.dirname(__file__), "..", "..", "contrib", "fail2ban",
                                   "filter.d", "shardmail.conf")
        out = subprocess.run([fail2ban_regex, "--out", "ip", server.log_path, filter_path],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        self.assertEqual(out.split(), ["127.0.0.1"] * 4, out)

    def test_json_log_lines_carry_the_same_fields(self):
        # Harness start waits for the text of the ready line, which JSON carries too.
        server = Server(settings={"log.format": '"json"'})
        server.add_user(ALICE, "pw")
        server.start()
        try:
            m = Imaps(server.ports["imaps"])
            with self.assertRaises(imaplib.IMAP4.error):
                # imaplib sends the user name as it is: quote it as IMAP requires.
                m.login(m._quote('x" ip=192.0.2.9'), "wrong")
            m.shutdown()
        finally:
            server.stop()
        events = [json.loads(l) for l in server.read_log_all().splitlines() if l.strip()]
        logins = [e for e in events if e.get("target") == "shardmail::login"]
        self.assertEqual(len(logins), 1, events)
        self.assertEqual({k: logins[0][k] for k in ("protocol", "ip", "user", "result")},
                         {"protocol": "imap", "ip": "127.0.0.1", "user": 'x" ip=192.0.2.9',
                          "result": "failed"})
        self.assertTrue(all({"timestamp", "level", "message"} <= e.keys() for e in events))


class DiskFull(unittest.TestCase):
    """6. A full disk is a temporary condition; nothing acknowledged is lost."""

    def test_full_disk_refuses_then_resumes_without_restart(self):
        mnt = tempfile.mkdtemp(prefix="shardmail-tmpfs-")
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", mnt],
                                 capture_output=True)
        if mounted.returncode != 0:
            os.rmdir(mnt)
            self.skipTest(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
        server = None
        try:
            data = os.path.join(mnt, "data")
            server = Server(data_dir=data, settings={
                "store.reserve_free_bytes": '"4MiB"',
                "server.partitions": "4",
            })
            server.add_user(ALICE, "pw")
            server.start()
            filler = os.path.join(mnt, "filler")
            with open(filler, "wb") as f:
                f.write(b"\0" * (24 << 20))
            body = b"Subject: fill\r\n\r\n" + (b"z" * 1022 + b"\r\n") * 512  # 512 KiB
            acked, refused = [], None
            with smtplib.SMTP(*server.smtp_address(), timeout=30) as s:
                for i in range(200):
                    msg = body + b"n=%d\r\n" % i
                    try:
                        s.sendmail("a@remote.example", [ALICE], msg)
                        acked.append(msg)
                    except smtplib.SMTPDataError as e:
                        refused = e
                        break
            self.assertIsNotNone(refused, "the disk never filled")
            self.assertEqual(refused.smtp_code, 452)
            self.assertIn(b"4.3.1", refused.smtp_error)
            self.assertNotIn(mnt.encode(), refused.smtp_error)
            m = Imaps(server.ports["imaps"])
            m.login(ALICE, "pw")
            typ, data = m.append("INBOX", None, None, body)
            self.assertEqual(typ, "NO")
            self.assertIn(b"OVERQUOTA", data[0])
            self.assertNotIn(mnt.encode(), data[0])
            # Expunging still works on a full disk.
            m.select("INBOX")
            m.store("1", "+FLAGS", "\\Deleted")
            self.assertEqual(m.expunge()[0], "OK")
            acked.pop(0)
            # Space returns: delivery resumes, no restart.
            os.remove(filler)
            time.sleep(0.5)
            with smtplib.SMTP(*server.smtp_address(), timeout=30) as s:
                s.sendmail("a@remote.example", [ALICE], body + b"after\r\n")
            acked.append(body + b"after\r\n")
            typ, data = m.append("INBOX", None, None, b"Subject: a\r\n\r\nb\r\n")
            self.assertEqual(typ, "OK", data)
            m.logout()
            self.assertEqual(server.stop(), 0)
            stored = server.messages(ALICE)
            for msg in acked:
                self.assertTrue(any(st.endswith(msg) for st in stored), "an acknowledged message was lost")
        finally:
            if server:
                server.stop()
            subprocess.run(["umount", "-l", mnt], check=False)
            os.rmdir(mnt)


class Security(unittest.TestCase):
    """7. Signing, names, replies, EHLO, SIGHUP, SNI."""

    @classmethod
    def setUpClass(cls):
        cls.server = Server(settings={"domains.local": f'["{DOMAIN}", "other.test"]'})
        cls.server.add_user(ALICE, "pw")
        cls.server.add_user("ceo@other.test", "pw")
        cls.server.cli("dkim", "generate", DOMAIN)
        cls.server.cli("dkim", "generate", "other.test")
        cls.server.start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def submit(self, from_header):
        with smtplib.SMTP("127.0.0.1", self.server.ports["submission"], timeout=30) as s:
            s.starttls(context=tls_context())
            s.login(ALICE, "pw")
            return s.sendmail(ALICE, [ALICE], f"From: {from_header}\r\nSubject: s\r\n\r\nx\r\n".encode())

    def test_dkim_signs_only_the_logins_domains(self):
        with self.assertRaises(smtplib.SMTPDataError) as e:
            self.submit("ceo@other.test")
        self.assertEqual(e.exception.smtp_code, 550)
        self.assertIn(b"5.7.1", e.exception.smtp_error)
        self.assertIn(b"auth.from_header_match", e.exception.smtp_error)
        self.assertEqual(self.submit(f"Alice <{ALICE}>"), {})
        signed = [m for m in self.server.messages(ALICE) if b"DKIM-Signature" in m]
        self.assertTrue(signed)
        self.assertFalse(any(b"d=other.test" in m for m in signed))

    def test_mailbox_names_cannot_escape(self):
        m = Imaps(self.server.ports["imaps"])
        m.login(ALICE, "pw")
        for name in ["..", ".", "../x", "INBOX/../../../x"]:
            typ, data = m.create(name)
            self.assertEqual(typ, "NO", name)
        self.assertEqual(m.create("fine/child")[0], "OK")
        m.logout()
        out = self.server.export(ALICE)
        for root, dirs, files in os.walk(out):
            self.assertTrue(os.path.realpath(root).startswith(os.path.realpath(out)))

    def test_ehlo_must_be_a_domain_or_literal(self):
        for arg in ["a\u0085b.example".encode(), "x\u2028y".encode(), b")(", b"[1.2.3]"]:
            s = raw(self.server.smtp_address()[1])
            read_line(s)
            s.sendall(b"EHLO " + arg + b"\r\n")
            self.assertTrue(read_line(s).startswith(b"501 5.5.4"), arg)
            s.sendall(b"EHLO [127.0.0.1]\r\n")
            self.assertTrue(read_until(s, b"250 ").startswith(b"250"))
            s.close()

    def test_sighup_does_not_stop_the_server(self):
        self.server.proc.send_signal(signal.SIGHUP)
        time.sleep(1)
        self.assertIsNone(self.server.proc.poll())
        s = raw(self.server.smtp_address()[1])
        self.assertTrue(read_line(s).startswith(b"220 "))
        s.close()
        with open(self.server.log_path, "rb") as f:
            # SIGHUP reloads (test_reload covers what it changes).
            self.assertIn(b"configuration reloaded", f.read())

    @unittest.skipUnless(shutil.which("openssl"), "needs the openssl command")
    def test_ip_literal_sni_is_not_logged(self):
        size = os.path.getsize(self.server.log_path)
        for _ in range(20):
            subprocess.run(["openssl", "s_client", "-connect",
                            f"127.0.0.1:{self.server.ports['imaps']}", "-servername", "192.0.2.1"],
                           input=b"a LOGOUT\r\n", capture_output=True, timeout=30)
        with open(self.server.log_path, "rb") as f:
            f.seek(size)
            tail = f.read()
        self.assertNotIn(b"SNI", tail)
        self.assertNotIn(b"WARN", tail)


if __name__ == "__main__":
    unittest.main()
