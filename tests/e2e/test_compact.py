"""Compaction (issue 12) against the real binary and Python's imaplib.

Mail is delivered over SMTP, some of it expunged over IMAP, a mailbox deleted and an
account deleted (`user del`); with the server stopped, `shardmail store compact` is
killed (-9) at random moments within the time one run takes, many times, each on a
fresh copy of the data directory: after every kill the store opens (`store stats`)
and exports exactly the live mail. Then it runs to the end on the real directory: every live message is
there byte for byte with its UID, nothing expunged came back, UIDVALIDITY, UIDNEXT
and HIGHESTMODSEQ are unchanged, a new delivery takes the next UID, and the logs
take at most 1.2 times the live message bytes plus a fixed overhead. Bounded: 12
kills, each within a second.
"""
import imaplib
import os
import random
import shutil
import smtplib
import subprocess
import tempfile
import threading
import time
import unittest

from harness import BIN, DOMAIN, Server, log_bytes, strip_received, tls_context

KILLS = 12
ROUNDS_ONLINE = 6


def message(i, size=40000):
    return (f"From: c@remote.example\r\nSubject: m{i}\r\n\r\n".encode() +
            (f"line {i} ".encode() * (size // 8)) + b"\r\n")


def read(path):
    with open(path, "rb") as f:
        return f.read()


class Compaction(unittest.TestCase):
    def imap(self, server, user):
        c = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=tls_context())
        c.login(user, "pw")
        return c

    def state(self, server, user):
        c = self.imap(server, user)
        try:
            out = {}
            for box in ("INBOX", "Keep"):
                typ, data = c.status(box, "(MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)")
                self.assertEqual(typ, "OK", data)
                out[box] = data[0].decode()
            c.select("INBOX")
            typ, data = c.uid("SEARCH", None, "ALL")
            out["uids"] = data[0].decode()
            return out
        finally:
            c.logout()

    def test_kill_9_during_compaction_loses_nothing_and_resurrects_nothing(self):
        server = Server()
        alice, gone = f"alice@{DOMAIN}", f"gone@{DOMAIN}"
        server.add_user(alice, "pw")
        server.add_user(gone, "pw")
        server.start()
        with smtplib.SMTP(*server.smtp_address(), timeout=30) as s:
            for i in range(300):
                s.sendmail("c@remote.example", [alice], message(i))
            for i in range(100):
                s.sendmail("c@remote.example", [gone], message(1000 + i))
        c = self.imap(server, alice)
        try:
            c.create("Keep")
            c.create("Doomed")
            c.select("INBOX")
            c.copy("1:20", "Keep")
            c.copy("1:50", "Doomed")
            # Expunge two of every three in INBOX, keep flags on some survivors.
            c.store("1:300", "+FLAGS.SILENT", "(\\Deleted)")
            every_third = ",".join(str(n) for n in range(3, 301, 3))
            c.store(every_third, "-FLAGS.SILENT", "(\\Deleted)")
            c.store("3,6,9", "+FLAGS", "(\\Flagged $Important)")
            c.expunge()
            c.delete("Doomed")
        finally:
            c.logout()
        before = self.state(server, alice)
        server.cli("user", "del", gone)
        server.stop()
        expected = {box: sorted(server.messages(alice, box)) for box in ("INBOX", "Keep")}
        live = sum(len(m) for msgs in expected.values() for m in msgs)
        stats = server.cli("store", "stats").stdout
        self.assertIn("total", stats)
        size_before = log_bytes(server.data_dir)

        # How long one compaction takes here, on a copy; then kill copies of the
        # same directory at random moments within that time.
        pristine = tempfile.mkdtemp(prefix="shardmail-compact-")
        shutil.copytree(server.data_dir, pristine, dirs_exist_ok=True)
        work = pristine + "-work"

        def run_on_copy():
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(pristine, work)
            args = server.args()
            args[args.index("--data-dir") + 1] = work
            return args

        args = run_on_copy()
        t0 = time.monotonic()
        subprocess.run([BIN, *args, "store", "compact"], check=True, capture_output=True)
        took = time.monotonic() - t0
        rng = random.Random(12)
        interrupted = 0
        for _ in range(KILLS):
            args = run_on_copy()
            proc = subprocess.Popen([BIN, *args, "store", "compact"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.0, took))
            proc.kill()
            proc.wait(timeout=30)
            interrupted += proc.returncode != 0
            # After every kill the store opens, and holds exactly the live mail.
            subprocess.run([BIN, *args, "store", "stats"], check=True, capture_output=True)
            for box, msgs in expected.items():
                out = tempfile.mkdtemp(prefix="shardmail-compact-export-")
                subprocess.run([BIN, *args, "export", alice, "--out", out], check=True,
                               capture_output=True)
                cur = os.path.join(out, box, "cur")
                got = sorted(read(os.path.join(cur, n)) for n in os.listdir(cur))
                shutil.rmtree(out)
                self.assertEqual(got, msgs, box)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(pristine, ignore_errors=True)
        print(f"\ncompaction takes {took:.2f} s here; killed {KILLS} times, "
              f"{interrupted} before it finished", end=" ")
        done = server.cli("store", "compact")
        self.assertIn("compacted:", done.stdout)
        for box, msgs in expected.items():
            self.assertEqual(sorted(server.messages(alice, box)), msgs, box)
        size_after = log_bytes(server.data_dir)
        self.assertLess(size_after, size_before)
        # Each message once, plus a fixed overhead per partition and per record.
        self.assertLessEqual(size_after, 1.2 * live + 64 * 1024, (size_after, live))

        server.start()
        try:
            # Asked of a running server, compaction is the server's (nothing left here).
            online = server.cli("store", "compact")
            self.assertIn("compacted 0 partitions", online.stdout)
            after = self.state(server, alice)
            self.assertEqual(after, before)
            with smtplib.SMTP(*server.smtp_address(), timeout=30) as s:
                s.sendmail("c@remote.example", [alice], message(9999))
            c = self.imap(server, alice)
            try:
                c.select("INBOX")
                typ, data = c.uid("FETCH", "*", "(UID FLAGS)")
                uidnext = int(before["INBOX"].split("UIDNEXT ")[1].split()[0].rstrip(")"))
                self.assertIn(f"UID {uidnext}".encode(), data[0])
                typ, data = c.fetch("1", "(FLAGS)")
                self.assertIn(b"$Important", data[0])
            finally:
                c.logout()
            # The deleted account's mail is gone for good.
            self.assertNotIn(b"m1000", b"".join(
                strip_received(m) for m in server.messages(alice, "INBOX")))
        finally:
            server.stop()


class OnlineCompaction(unittest.TestCase):
    """The server compacts by itself while mail arrives; kill -9 mid-compaction."""

    # The load below must not dilute the garbage under the ratio before the next check
    # (once a second): unthrottled, 20 KB messages grew the log by ~10 MB/s and, when
    # the check came late, the 2 MB just expunged fell below 0.3 and no compaction ever
    # started (a flake seen in CI). A lower ratio and a paced sender keep the trigger
    # certain while mail still arrives throughout the compaction.
    SETTINGS = {
        "store.compaction_check_secs": "1",
        "store.compaction_min_garbage_bytes": "0",
        "store.compaction_garbage_ratio": "0.1",
        "store.compaction_bytes_per_sec": "2MiB",
    }

    def test_kill_9_during_online_compaction_under_load(self):
        server = Server(settings=self.SETTINGS)
        alice = f"alice@{DOMAIN}"
        server.add_user(alice, "pw")
        server.start()
        acked, expunged = set(), set()
        try:
            with smtplib.SMTP(*server.smtp_address(), timeout=30) as s:
                for i in range(150):
                    s.sendmail("c@remote.example", [alice], message(i, 20000))
                    acked.add(f"m{i}")
            rng = random.Random(7)
            interrupted = 0
            for round_no in range(ROUNDS_ONLINE):
                # From here on: the expunge below may start a compaction at once.
                log_start = os.path.getsize(server.log_path)
                # Make garbage: expunge two of every three messages there now.
                c = Compaction.imap(self, server, alice)
                try:
                    c.select("INBOX")
                    typ, data = c.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                    subjects = [d[1].decode().split(":", 1)[1].strip()
                                for d in data if isinstance(d, tuple)]
                    doomed = [n for n in range(1, len(subjects) + 1) if n % 3]
                    if doomed:
                        c.store(",".join(map(str, doomed)), "+FLAGS.SILENT", "(\\Deleted)")
                        c.expunge()
                        expunged.update(subjects[n - 1] for n in doomed)
                finally:
                    c.logout()
                stop = threading.Event()

                def load(tags):
                    n = 0
                    with smtplib.SMTP(*server.smtp_address(), timeout=30) as s:
                        while not stop.is_set():
                            tag = f"r{round_no}-{n}"
                            try:
                                s.sendmail("c@remote.example", [alice], message(tag, 20000))
                            except (smtplib.SMTPException, OSError):
                                return
                            tags.add(tag)
                            n += 1
                            time.sleep(0.01)  # ~2 MB/s at most: see SETTINGS

                tags = set()
                sender = threading.Thread(target=load, args=(tags,))
                sender.start()
                # Kill at a random moment after the server starts compacting.
                deadline = time.time() + 30
                while b"compacting" not in read_from(server.log_path, log_start):
                    self.assertLess(time.time(), deadline, "no compaction started")
                    time.sleep(0.02)
                time.sleep(rng.uniform(0.0, 1.2))
                finished = b"compacted" in read_from(server.log_path, log_start)
                interrupted += not finished
                server.kill()
                stop.set()
                sender.join(timeout=30)
                # Every message that got 250 is there, none expunged is back.
                acked |= {"m" + t for t in tags}
                server.start()
                present = {subject(m) for m in server.messages(alice)}
                missing = {t for t in acked - expunged if t not in present}
                self.assertEqual(missing, set(), f"round {round_no}")
                self.assertEqual(present & expunged, set(), f"round {round_no}")
            print(f"\nonline compaction killed {ROUNDS_ONLINE} times, {interrupted} before it finished",
                  end=" ")
            # Left alone, it finishes: the log shrinks, a bystander was served.
            log_start = os.path.getsize(server.log_path)
            c = Compaction.imap(self, server, alice)
            c.select("INBOX")
            c.store("1:*", "+FLAGS.SILENT", "(\\Deleted)")
            c.expunge()
            deadline = time.time() + 60
            while (b"compacted" not in read_from(server.log_path, log_start)
                   or log_bytes(server.data_dir) >= 64 * 1024):
                self.assertEqual(c.noop()[0], "OK")
                self.assertLess(time.time(), deadline, "the garbage was not reclaimed")
                time.sleep(0.05)
            self.assertEqual(int(c.select("INBOX")[1][0]), 0)
            c.logout()
            self.assertNotIn(b"compaction failed", read_from(server.log_path, 0))
        finally:
            server.stop()
        self.assertLess(log_bytes(server.data_dir), 64 * 1024)


def subject(stored):
    at = stored.index(b"\r\nSubject: ") + 11
    return stored[at:stored.index(b"\r\n", at)].decode()


def read_from(path, offset):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read()


if __name__ == "__main__":
    unittest.main()
