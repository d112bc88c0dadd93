"""Crash safety: nothing acknowledged with 250 is ever lost.

Many concurrent smtplib senders, `kill -9` of the server mid-load, restart: every
message that got 250 is stored byte for byte, and the store opens cleanly. Also a
deterministic torn tail (a half-written record appended to a log) that recovery must
truncate. Load is bounded in count and time.
"""
import imaplib
import os
import re
import smtplib
import threading
import time
import unittest

from harness import DOMAIN, Server, partition_of, strip_received, tls_context

SENDERS = 16
ROUNDS = 3
LOAD_SECONDS = 1.5


def message(tag):
    return (b"From: load@remote.example\r\nSubject: " + tag.encode() +
            b"\r\nMessage-ID: <" + tag.encode() + b"@load>\r\n\r\n" +
            (b"payload " + tag.encode() + b"\r\n") * 40)


class CrashSafety(unittest.TestCase):
    def test_kill_9_under_load_loses_nothing_acknowledged(self):
        server = Server(shards=2)
        users = [f"crash{i}@{DOMAIN}" for i in range(4)]
        for u in users:
            server.add_user(u)
        acked = {}  # tag -> recipient list
        lock = threading.Lock()
        for round_no in range(ROUNDS):
            server.start()
            stop_at = time.monotonic() + LOAD_SECONDS

            def sender(worker):
                seq = 0
                try:
                    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10) as s:
                        while time.monotonic() < stop_at + 5:  # bounded; the kill ends it
                            tag = f"r{round_no}-w{worker}-{seq}"
                            rcpts = [users[worker % 4], users[(worker + seq) % 4]]
                            rcpts = sorted(set(rcpts))
                            if s.sendmail("load@remote.example", rcpts, message(tag)) == {}:
                                with lock:
                                    acked[tag] = rcpts
                            seq += 1
                except (smtplib.SMTPException, OSError):
                    pass  # the server died under us: expected

            threads = [threading.Thread(target=sender, args=(w,)) for w in range(SENDERS)]
            for t in threads:
                t.start()
            time.sleep(LOAD_SECONDS)
            server.kill()
            for t in threads:
                t.join(timeout=30)
            self.assertGreater(len(acked), 0, "no message was acknowledged before the kill")

        server.start()  # recovery must open every partition cleanly
        server.stop()
        log = server.read_log()
        self.assertNotIn("ERROR", log)
        stored = {}
        for u in users:
            for m in server.messages(u):
                body = strip_received(m)
                tag = body.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
                stored.setdefault(tag, []).append(u)
                self.assertEqual(body, message(tag), f"{tag} stored with different bytes")
        missing = [(t, r) for t, r in acked.items() if sorted(stored.get(t, [])) != r]
        self.assertEqual(missing[:5], [], f"{len(missing)} of {len(acked)} acknowledged lost")
        print(f"\ncrash test: {len(acked)} acknowledged over {ROUNDS} kill -9 rounds, all present",
              flush=True)

    def test_kill_9_loses_no_acknowledged_imap_append_or_flag(self):
        """IMAP: an APPEND answered OK [APPENDUID] and a STORE answered OK survive kill -9."""
        server = Server(shards=2)
        users = [f"imapcrash{i}@{DOMAIN}" for i in range(4)]
        for u in users:
            server.add_user(u, "pw")
        appended = {}  # (user, uid) -> bytes
        flagged = set()  # (user, uid)
        lock = threading.Lock()
        for round_no in range(2):
            server.start()
            stop_at = time.monotonic() + LOAD_SECONDS

            def client(worker):
                user = users[worker % len(users)]
                try:
                    m = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=tls_context(), timeout=10)
                    m.login(user, "pw")
                    seq = 0
                    while time.monotonic() < stop_at + 5:  # bounded; the kill ends it
                        body = message(f"i{round_no}-w{worker}-{seq}")
                        typ, data = m.append("INBOX", None, None, body)
                        if typ != "OK":
                            break
                        uid = int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))
                        with lock:
                            appended[(user, uid)] = body
                        m.select("INBOX")
                        typ, _ = m.uid("STORE", str(uid), "+FLAGS", "(\\Flagged)")
                        if typ == "OK":
                            with lock:
                                flagged.add((user, uid))
                        seq += 1
                except (imaplib.IMAP4.error, imaplib.IMAP4.abort, OSError):
                    pass  # the server died under us: expected

            threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
            for t in threads:
                t.start()
            time.sleep(LOAD_SECONDS)
            server.kill()
            for t in threads:
                t.join(timeout=30)
        self.assertGreater(len(appended), 0, "no APPEND was acknowledged before the kill")
        server.start()
        try:
            missing, unflagged = [], []
            for user in users:
                m = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=tls_context(), timeout=20)
                m.login(user, "pw")
                m.select("INBOX", readonly=True)
                typ, data = m.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[])")
                have = {}
                for part in data:
                    if isinstance(part, tuple):
                        uid = int(re.search(rb"UID (\d+)", part[0]).group(1))
                        have[uid] = (part[1], b"\\Flagged" in part[0])
                m.logout()
                for (u, uid), body in appended.items():
                    if u != user:
                        continue
                    if have.get(uid, (None,))[0] != body:
                        missing.append((u, uid))
                    elif (u, uid) in flagged and not have[uid][1]:
                        unflagged.append((u, uid))
        finally:
            server.stop()
        self.assertEqual(missing[:5], [], f"{len(missing)} of {len(appended)} acknowledged APPENDs lost")
        self.assertEqual(unflagged[:5], [], f"{len(unflagged)} acknowledged STOREs lost")
        print(f"\nIMAP crash test: {len(appended)} APPENDs and {len(flagged)} STOREs acknowledged, all present",
              flush=True)

    def test_torn_tail_is_truncated_at_start(self):
        server = Server(shards=1)
        user = f"torn@{DOMAIN}"
        server.add_user(user)
        server.start()
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10) as s:
            s.sendmail("x@remote.example", [user], message("before-tear"))
        self.assertEqual(server.stop(), 0)
        part = partition_of(server.account_id(user), 64)
        log_path = os.path.join(server.data_dir, "partitions", f"{part:04}", "messages.log")
        good_len = os.path.getsize(log_path)
        with open(log_path, "ab") as f:  # a record header promising more than follows
            f.write(b"\x00\x10\x00\x00\xde\xad\xbe\xef\x01" + b"\x00" * 7 + b"half a message")
        self.assertEqual([strip_received(m) for m in server.messages(user)],
                         [message("before-tear")], "export ignores a torn tail")
        server.start()
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10) as s:
            s.sendmail("x@remote.example", [user], message("after-tear"))
        self.assertEqual(server.stop(), 0)
        self.assertIn("truncating torn tail", server.read_log())
        self.assertGreater(os.path.getsize(log_path), good_len)
        self.assertEqual([strip_received(m) for m in server.messages(user)],
                         [message("before-tear"), message("after-tear")])


if __name__ == "__main__":
    unittest.main()
