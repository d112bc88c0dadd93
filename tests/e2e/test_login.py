"""Logins, cheap without weaker passwords: app passwords (`shardmail user
app-password`), the verified-login cache (`limits.auth_cache_secs`, on by default) and
the shared, fair password pool (`limits.password_threads`), driven by Python's own
imaplib, poplib and smtplib against the real server."""

import imaplib
import json
import os
import poplib
import smtplib
import threading
import time
import unittest

from abuse import Imaps, median_ms
from harness import DOMAIN, Server, log_events, tls_context

ALICE = f"alice@{DOMAIN}"


def imap_login(server, user, password, source=None):
    m = Imaps(server.ports["imaps"], source=source)
    try:
        m.login(user, password)
        return True
    except imaplib.IMAP4.error:
        return False
    finally:
        m.shutdown()


def pop3_login(server, user, password):
    p = poplib.POP3_SSL("127.0.0.1", server.ports["pop3s"], context=tls_context(), timeout=30)
    try:
        p.user(user)
        p.pass_(password)
        return True
    except poplib.error_proto:
        return False
    finally:
        p.close()


def smtp_login(server, user, password):
    with smtplib.SMTP_SSL("127.0.0.1", server.ports["submissions"], timeout=30,
                          context=tls_context()) as s:
        try:
            s.login(user, password)
            return True
        except smtplib.SMTPAuthenticationError:
            return False


def add_app_password(server, label, *scope):
    args = ["user", "app-password", "add", ALICE, "--label", label]
    for s in scope:
        args += ["--scope", s]
    out = server.cli(*args).stdout.splitlines()
    return out[1].strip()


class AppPasswords(unittest.TestCase):
    def test_scoped_app_passwords_log_in_and_revocation_applies_at_once(self):
        # The refusals below are failures too; the back-off is not under test here.
        server = Server(settings={"limits.auth_failures_max": "100",
                                  "limits.login_failures_before_backoff": "50"})
        server.add_user(ALICE, "account-pw")
        phone = add_app_password(server, "phone")
        mua = add_app_password(server, "mua", "imap")
        self.assertRegex(phone, r"^([0-9a-f]{4}-){7}[0-9a-f]{4}$")
        listing = server.cli("user", "app-password", "list", ALICE).stdout
        self.assertIn("phone\timap,pop3,smtp\t", listing)
        self.assertIn("mua\timap\t", listing)
        # Only a keyed hash is stored: the secret is nowhere in users.json.
        with open(os.path.join(server.data_dir, "users.json")) as f:
            stored = f.read()
        for secret in (phone, mua):
            self.assertNotIn(secret.replace("-", ""), stored)
            self.assertNotIn(secret, stored)
        again = server.cli("user", "app-password", "add", ALICE, "--label", "phone", check=False)
        self.assertNotEqual(again.returncode, 0)
        self.assertIn("already has an app password labelled", again.stderr)
        server.start()
        try:
            self.assertTrue(imap_login(server, ALICE, phone))
            self.assertTrue(pop3_login(server, ALICE, phone))
            self.assertTrue(smtp_login(server, ALICE, phone))
            # As a user might type it off a screen: spaces, capitals.
            self.assertTrue(imap_login(server, ALICE, phone.replace("-", " ").upper()))
            # Scoped to IMAP: refused by POP3 and SMTP.
            self.assertTrue(imap_login(server, ALICE, mua))
            self.assertFalse(pop3_login(server, ALICE, mua))
            self.assertFalse(smtp_login(server, ALICE, mua))
            # Another account's app password is not this one's.
            server.add_user(f"bob@{DOMAIN}", "bob-pw")
            self.assertFalse(imap_login(server, f"bob@{DOMAIN}", phone))
            # Revoked: the very next login is refused (no second of grace); the
            # account password and the other app password still work.
            server.cli("user", "app-password", "revoke", ALICE, "--label", "phone")
            self.assertFalse(imap_login(server, ALICE, phone))
            self.assertFalse(smtp_login(server, ALICE, phone))
            self.assertTrue(imap_login(server, ALICE, mua))
            self.assertTrue(imap_login(server, ALICE, "account-pw"))
        finally:
            self.assertEqual(server.stop(), 0)
        self.assertNotIn("phone", server.cli("user", "app-password", "list", ALICE).stdout)
        ok = [e for e in log_events(server, "shardmail::login") if e["result"] == "ok"]
        by_label = [e.get("app_password") for e in ok if e.get("credential") == "app-password"]
        self.assertEqual(by_label.count("phone"), 4, ok)
        self.assertEqual(by_label.count("mua"), 2, ok)
        self.assertEqual([e["credential"] for e in ok][-1], "password")

    def test_bad_labels_scopes_and_unknown_accounts_are_clear_errors(self):
        server = Server()
        server.add_user(ALICE, "pw")
        for args, said in (
            (["--label", "my phone"], "a label is 1 to 32"),
            (["--label", "x", "--scope", "ftp"], "a scope is one of imap, pop3, smtp"),
        ):
            r = server.cli("user", "app-password", "add", ALICE, *args, check=False)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn(said, r.stderr)
        r = server.cli("user", "app-password", "add", f"nobody@{DOMAIN}", "--label", "x",
                       check=False)
        self.assertIn("no user", r.stderr)
        r = server.cli("user", "app-password", "revoke", ALICE, "--label", "x", check=False)
        self.assertIn("no app password labelled", r.stderr)


class LoginCache(unittest.TestCase):
    def test_cached_logins_skip_argon2_and_a_new_password_applies_at_once(self):
        # limits.auth_cache_secs: the default, 300 s. The refused old passwords are
        # failures too (smtplib tries PLAIN, then LOGIN); the back-off is not under test.
        server = Server(settings={"limits.login_failures_before_backoff": "50"})
        server.add_user(ALICE, "old-pw")
        server.start()
        try:
            for _ in range(4):
                self.assertTrue(smtp_login(server, ALICE, "old-pw"))
                self.assertTrue(imap_login(server, ALICE, "old-pw"))
            server.cli("user", "passwd", ALICE, "--password-stdin", stdin="new-pw\n")
            # No waiting: the next login on any shard sees the new password.
            for _ in range(3):
                self.assertFalse(imap_login(server, ALICE, "old-pw"),
                                 "a cached old password must not log in")
                self.assertFalse(smtp_login(server, ALICE, "old-pw"))
            self.assertTrue(imap_login(server, ALICE, "new-pw"))
            server.cli("user", "del", ALICE)
            self.assertFalse(imap_login(server, ALICE, "new-pw"), "deleted, cached or not")
        finally:
            self.assertEqual(server.stop(), 0)
        ok = [e["credential"] for e in log_events(server, "shardmail::login")
              if e["result"] == "ok"]
        # One cache for all shards: only the first login of each password paid argon2
        # (smtplib's PLAIN is one attempt per connection).
        self.assertEqual(ok.count("password"), 2, ok)
        self.assertEqual(ok.count("cached"), 7, ok)


    def test_a_client_opening_several_connections_at_once_pays_one_argon2_run(self):
        server = Server()
        server.add_user(ALICE, "pw")
        server.start()
        try:
            # Like Thunderbird at start-up: five connections log in at the same moment.
            barrier = threading.Barrier(5)
            results = []

            def connect():
                m = Imaps(server.ports["imaps"])
                barrier.wait(timeout=30)
                m.login(ALICE, "pw")
                results.append(True)
                m.logout()

            threads = [threading.Thread(target=connect) for _ in range(5)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            self.assertEqual(len(results), 5)
        finally:
            self.assertEqual(server.stop(), 0)
        ok = [e["credential"] for e in log_events(server, "shardmail::login")
              if e["result"] == "ok"]
        self.assertEqual(len(ok), 5, ok)
        # The others waited for the first verification and found it in the cache (a
        # straggler arriving after it ended is a cache hit too).
        self.assertEqual(ok.count("password"), 1, ok)


class FairPool(unittest.TestCase):
    def test_a_burst_from_one_address_does_not_hold_up_another(self):
        # One verification thread and no cache, so every login is a queued argon2 run
        # and the queue's order decides who waits.
        server = Server(settings={
            "limits.auth_cache_secs": "0",
            "limits.password_threads": "1",
            "limits.ip_limit_exempt_networks": "[]",
            "limits.connections_per_ip_max": "200",
        })
        users = [f"u{i}@{DOMAIN}" for i in range(16)]
        for u in users:
            server.add_user(u, "pw")
        server.add_user(ALICE, "pw")
        server.start()
        try:
            def timed_login(user, source):
                t = time.perf_counter()
                self.assertTrue(imap_login(server, user, "pw", source=source))
                return time.perf_counter() - t

            idle = median_ms([timed_login(ALICE, "127.0.0.3") for _ in range(5)])
            flood_times, stop = [], threading.Event()
            lock = threading.Lock()

            def flood(user):
                while not stop.is_set():
                    took = timed_login(user, "127.0.0.2")
                    with lock:
                        flood_times.append(took)

            threads = [threading.Thread(target=flood, args=(u,)) for u in users]
            for t in threads:
                t.start()
            time.sleep(1.5)
            during = median_ms([timed_login(ALICE, "127.0.0.3") for _ in range(5)])
            stop.set()
            for t in threads:
                t.join(timeout=60)
            flooded = median_ms(flood_times)
            print(f"\n  one password thread, 16 logins at a time from 127.0.0.2: theirs "
                  f"{flooded:.0f} ms each; another address's {idle:.0f} ms idle, "
                  f"{during:.0f} ms meanwhile")
            # The burst waits behind itself (~16 argon2 runs); the other address waits
            # for at most the run in progress and its own.
            self.assertGreater(flooded, 4 * idle)
            self.assertLess(during, 3 * idle + 60)
            self.assertLess(during, flooded / 2)
        finally:
            self.assertEqual(server.stop(), 0)


if __name__ == "__main__":
    unittest.main()
