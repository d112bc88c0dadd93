"""antispam.rate_limits and the pregreet check against the real server, driven by
smtplib and raw sockets from several loopback addresses (each a different client):
every limit's reply, and a bystander that must still be served."""
import os
import smtplib
import socket
import tempfile
import time
import unittest

from harness import HAVE_DNSMASQ, DOMAIN, Server, free_port, log_events, start_dnsmasq, tls_context, wait_for

ALICE = f"alice@{DOMAIN}"
LIMITS = ('[{key="client_ip",count="messages",window="1m",limit=5},'
          '{key="client_ip",count="connections",window="1m",limit=8},'
          '{key="client_ip",count="failed_commands",window="1m",limit=3},'
          '{key="auth_user",count="messages",window="1h",limit=3}]')


def message(i):
    return f"From: x@remote.example\r\nTo: {ALICE}\r\nSubject: burst {i}\r\n\r\nbody\r\n"


def mx(server, source):
    # A HELO name of its own: smtplib's default here is an address literal of this
    # host, which is also ours, and the HELO check would refuse it.
    return smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=20,
                        source_address=(source, 0), local_hostname="client.remote.test")


class RateLimits(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server(settings={
            "antispam.exempt_networks": "[]",
            "antispam.rate_limits": LIMITS,
        })
        cls.server.add_user(ALICE, "pw")
        cls.server.start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def antispam_lines(self):
        return log_events(self.server, "shardmail::antispam")

    def test_a_burst_of_messages_is_cut_and_a_bystander_is_served(self):
        accepted, refused = 0, []
        with mx(self.server, "127.0.0.2") as s:
            for i in range(8):
                try:
                    s.sendmail("x@remote.example", [ALICE], message(i))
                    accepted += 1
                except smtplib.SMTPSenderRefused as e:
                    refused.append((e.smtp_code, e.smtp_error.decode()))
            # The session goes on: the client is told to come back, not cut off.
            self.assertEqual(s.noop()[0], 250)
        self.assertEqual(accepted, 5)
        self.assertEqual(len(refused), 3)
        code, text = refused[0]
        self.assertEqual(code, 451)
        self.assertIn("4.7.1", text)
        self.assertIn("client_ip messages 5/60s", text)
        self.assertIn("antispam.rate_limits", text)
        # Another client is not affected.
        with mx(self.server, "127.0.0.3") as s:
            self.assertEqual(s.sendmail("x@remote.example", [ALICE], message("bystander")), {})
        # One log line for the key, not one per refusal.
        lines = [e for e in self.antispam_lines()
                 if e.get("ip") == "127.0.0.2" and e.get("check") == "rate_limit"]
        self.assertEqual(len(lines), 1, lines)
        self.assertEqual(lines[0]["rule"], "client_ip messages 5/60s")

    def test_too_many_connections_get_421_at_the_greeting(self):
        for _ in range(8):
            with mx(self.server, "127.0.0.4") as s:
                self.assertEqual(s.noop()[0], 250)
        with socket.create_connection(("127.0.0.1", self.server.ports["smtp"]), timeout=10,
                                      source_address=("127.0.0.4", 0)) as raw:
            greeting = raw.recv(500).decode()
        self.assertTrue(greeting.startswith("421 4.7.0"), greeting)
        self.assertIn("client_ip connections 8/60s", greeting)
        with mx(self.server, "127.0.0.5") as s:
            self.assertEqual(s.noop()[0], 250)

    def test_a_dictionary_attack_is_disconnected(self):
        with mx(self.server, "127.0.0.6") as s:
            s.ehlo("attacker.test")
            s.mail("x@remote.example")
            codes = [s.rcpt(f"guess{i}@{DOMAIN}")[0] for i in range(3)]
            self.assertEqual(codes, [550, 550, 550])
            code, text = s.rcpt(f"guess3@{DOMAIN}")
            self.assertEqual(code, 421)
            self.assertIn(b"failed commands", text)
            with self.assertRaises(smtplib.SMTPServerDisconnected):
                s.noop()

    def test_a_stolen_password_sends_at_most_the_per_user_limit(self):
        self.server.add_user(f"sub@{DOMAIN}", "pw")
        time.sleep(1.2)  # the running server re-reads users.json at most once a second
        sent, refused = 0, None
        with smtplib.SMTP_SSL("127.0.0.1", self.server.ports["submissions"], timeout=20,
                              context=tls_context()) as s:
            s.login(f"sub@{DOMAIN}", "pw")
            for i in range(5):
                try:
                    s.sendmail(f"sub@{DOMAIN}", [ALICE],
                               message(f"sub{i}").replace("x@remote.example", f"sub@{DOMAIN}"))
                    sent += 1
                except smtplib.SMTPSenderRefused as e:
                    refused = e
                    break
        self.assertEqual(sent, 3)
        self.assertEqual(refused.smtp_code, 451)
        self.assertIn(b"auth_user messages 3/3600s", refused.smtp_error)


class Helo(unittest.TestCase):
    def test_a_client_greeting_with_our_name_or_address_is_refused(self):
        server = Server(settings={"antispam.exempt_networks": '["127.0.0.1/32"]'})
        server.start()
        try:
            with mx(server, "127.0.0.9") as s:
                for name in ["mx.example.test", "MX.example.test.", "[127.0.0.1]"]:
                    code, text = s.ehlo(name)
                    self.assertEqual(code, 550, name)
                    self.assertIn(b"you are not me", text)
                self.assertEqual(s.mail("x@remote.example")[0], 503)  # no HELO was taken
                self.assertEqual(s.ehlo("client.remote.test")[0], 250)
            # From our own networks the same name is fine (a local relay, a test).
            with mx(server, "127.0.0.1") as s:
                self.assertEqual(s.ehlo("mx.example.test")[0], 250)
        finally:
            server.stop()
        lines = [e for e in log_events(server, "shardmail::antispam") if e.get("check") == "helo"]
        self.assertEqual([e["helo"] for e in lines],
                         ["mx.example.test", "MX.example.test.", "[127.0.0.1]"])
        self.assertEqual({e["ip"] for e in lines}, {"127.0.0.9"})

    def test_repeated_fake_greetings_count_as_failed_commands(self):
        server = Server(settings={
            "antispam.exempt_networks": "[]",
            "antispam.rate_limits": '[{key="client_ip",count="failed_commands",window="1m",limit=3}]'})
        server.start()
        try:
            with mx(server, "127.0.0.9") as s:
                codes = [s.ehlo("mx.example.test")[0] for _ in range(3)]
                self.assertEqual(codes, [550, 550, 550])
                code, text = s.ehlo("mx.example.test")
                self.assertEqual(code, 421, text)
                self.assertIn(b"failed_commands", text)
        finally:
            server.stop()


@unittest.skipUnless(HAVE_DNSMASQ or os.environ.get("CI"), "dnsmasq is needed")
class ReverseDns(unittest.TestCase):
    """Forward-confirmed reverse DNS through the real resolver: recorded in Received:
    and the delivery log, and scored with antispam.fcrdns_fail_score. The resolver
    (hickory, RFC 6761) answers 127.in-addr.arpa names itself (from /etc/hosts, else
    `localhost.`), and those names resolve to 127.0.0.1 only: so 127.0.0.1 is confirmed
    (as `localhost` or this host's name) and 127.0.0.21 is not. (Names, mismatches and a second PTR name that points back:
    tests/auth_closed_world.rs with a pre-filled cache.)"""

    def test_confirmed_names_are_recorded_and_failures_scored(self):
        port = free_port()
        dns = start_dnsmasq(port, txt=[], hosts=[], dead_zone="dead.test")
        server = Server(settings={
            "dns.servers": f'["127.0.0.1:{port}"]',
            "auth.enabled": "false",
            "antispam.exempt_networks": "[]",
            "antispam.fcrdns_fail_score": "3",
            "antispam.junk_score": "3",
        })
        server.add_user(ALICE, "pw")
        server.start()
        try:
            for source in ["127.0.0.1", "127.0.0.21"]:
                with mx(server, source) as s:
                    self.assertEqual(s.sendmail("x@sender.test", [ALICE], message(source)), {})
        finally:
            server.stop()
            dns.terminate()
            dns.wait(timeout=10)
        inbox = server.messages(ALICE)
        self.assertEqual(len(inbox), 1, "only the confirmed client reaches the inbox")
        names = {e["client_ip"]: e["client_name"] for e in log_events(server, "shardmail::delivery")}
        self.assertEqual(names["127.0.0.21"], "-")
        confirmed = names["127.0.0.1"]
        self.assertNotEqual(confirmed, "-")
        self.assertIn(f"Received: from client.remote.test ({confirmed} [127.0.0.1])".encode(), inbox[0])
        self.assertNotIn(b"X-Spam-Score", inbox[0])
        junk = server.messages(ALICE, "Junk")
        self.assertEqual(len(junk), 1)
        self.assertIn(b"X-Spam-Score: 3 (dnsbl: fcrdns)", junk[0])
        self.assertIn(b"Received: from client.remote.test ([127.0.0.21])", junk[0])


@unittest.skipUnless(HAVE_DNSMASQ or os.environ.get("CI"), "dnsmasq is needed")
class Dnsbl(unittest.TestCase):
    """Block- and allowlists served by a real DNS server (dnsmasq) on loopback."""

    def test_listed_clients_are_refused_or_junked_and_others_pass(self):
        port = free_port()
        listed = [("10", "block.test", "127.0.0.2"), ("11", "junk.test", "127.0.0.2"),
                  ("12", "block.test", "127.0.0.9"),  # an answer the list's codes ignore
                  ("13", "block.test", "127.0.0.2"), ("13", "allow.test", "127.0.0.2")]
        queries = os.path.join(tempfile.mkdtemp(prefix="dnsmasq-"), "queries.log")
        dns = start_dnsmasq(port, txt=[], hosts=[], dead_zone="dead.test", extra=[
            f"--address=/{last}.0.0.127.{zone}/{answer}" for last, zone, answer in listed] + [
            "--log-queries", f"--log-facility={queries}"])
        server = Server(settings={
            "dns.servers": f'["127.0.0.1:{port}"]',
            "auth.enabled": "false",
            "antispam.exempt_networks": "[]",
            "antispam.dnsbl": '[{zone="block.test",weight=10,codes=["127.0.0.2"]},'
                              '{zone="junk.test",weight=5},{zone="allow.test",weight=-20}]',
        })
        server.add_user(ALICE, "pw")
        server.start()
        try:
            with socket.create_connection(("127.0.0.1", server.ports["smtp"]), timeout=20,
                                          source_address=("127.0.0.10", 0)) as raw:
                greeting = raw.recv(500).decode()
            self.assertTrue(greeting.startswith("554 5.7.1"), greeting)
            self.assertIn("client [127.0.0.10] blocked using block.test", greeting)
            for source in ["127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14"]:
                # Each with a forged verdict of its own, which must not survive.
                forged = "X-Spam-Score: -100 (dnsbl: forged)\r\n" + message(source)
                with mx(server, source) as s:
                    self.assertEqual(s.sendmail("x@sender.test", [ALICE], forged), {})
            # A client on no list connects again: "not listed" was cached.
            with mx(server, "127.0.0.14") as s:
                self.assertEqual(s.noop()[0], 250)
        finally:
            server.stop()
            dns.terminate()
            dns.wait(timeout=10)
        with open(queries) as f:
            asked = [line for line in f if "query[A] 14.0.0.127.block.test" in line]
        self.assertEqual(len(asked), 1, asked)
        junk = server.messages(ALICE, "Junk")
        self.assertEqual(len(junk), 1)
        self.assertIn(b"X-Spam-Score: 5 (dnsbl: junk.test)\r\n", junk[0])
        inbox = server.messages(ALICE)
        self.assertEqual(len(inbox), 3)  # 12, 13, 14; 10 was refused, 11 went to Junk
        by_source = {src: m for m in inbox for src in ("127.0.0.12", "127.0.0.13", "127.0.0.14")
                     if f"burst {src}".encode() in m}
        self.assertEqual(sorted(by_source), ["127.0.0.12", "127.0.0.13", "127.0.0.14"])
        self.assertNotIn(b"X-Spam-Score", by_source["127.0.0.12"])
        self.assertIn(b"X-Spam-Score: -10 (dnsbl: block.test,allow.test)", by_source["127.0.0.13"])
        self.assertNotIn(b"X-Spam-Score", by_source["127.0.0.14"])
        self.assertFalse(any(b"forged" in m for m in inbox + junk))
        refused = [e for e in log_events(server, "shardmail::antispam") if e.get("check") == "dnsbl"]
        self.assertEqual({e["ip"] for e in refused}, {"127.0.0.10", "127.0.0.11", "127.0.0.13"})


class Greylist(unittest.TestCase):
    def test_a_new_triplet_waits_once_and_is_remembered_across_a_restart(self):
        server = Server(settings={"antispam.exempt_networks": '["127.0.0.1/32"]',
                                  "antispam.greylist": "true",
                                  "antispam.greylist_delay": '"2s"'})
        server.add_user(ALICE, "pw")
        server.add_user(f"bob@{DOMAIN}", "pw")
        server.start()
        try:
            def attempt(source="127.0.1.20", to=ALICE, sender="s@sender.test"):
                with mx(server, source) as s:
                    s.ehlo("client.remote.test")
                    s.mail(sender)
                    code, text = s.rcpt(to)
                    if code == 250:
                        s.data(message("greylisted"))
                    return code, text.decode()
            code, text = attempt()
            self.assertEqual(code, 451)
            self.assertIn("4.7.1", text)
            self.assertIn("Greylisted, try again in 2 seconds", text)
            self.assertEqual(attempt()[0], 451)  # too soon
            # The same /24 is the same client (a sender's other outbound host).
            self.assertEqual(attempt(source="127.0.1.21")[0], 451)
            time.sleep(2.2)
            self.assertEqual(attempt(source="127.0.1.21")[0], 250)
            self.assertEqual(attempt()[0], 250)  # remembered
            # Another recipient is another triplet; our own network is not greylisted.
            self.assertEqual(attempt(to=f"bob@{DOMAIN}")[0], 451)
            self.assertEqual(attempt(source="127.0.0.1", sender="new@sender.test")[0], 250)
            server.stop()
            server.start()
            self.assertEqual(attempt()[0], 250)  # durable across the restart
            self.assertEqual(attempt(sender="other@sender.test")[0], 451)
        finally:
            server.stop()
        lines = [e for e in log_events(server, "shardmail::antispam") if e.get("check") == "greylist"]
        self.assertGreaterEqual(len(lines), 5)


class SenderLists(unittest.TestCase):
    """`shardmail user senders`: a blocked sender is refused at RCPT for that user
    only; an allowed one skips greylisting and lands in the inbox although the
    client's score says Junk."""

    def test_block_and_allow_per_user(self):
        bob = f"bob@{DOMAIN}"
        server = Server(settings={"antispam.exempt_networks": "[]",
                                  "antispam.greylist": "true",
                                  "antispam.fcrdns_fail_score": "5",
                                  "antispam.junk_score": "5"})
        server.add_user(ALICE, "pw")
        server.add_user(bob, "pw")
        out = server.cli("user", "senders", ALICE, "--allow", "Friend@Good.test",
                         "--allow", "@friends.test", "--block", "spam.test").stdout
        self.assertEqual(out.split("\n")[:3], ["allow friend@good.test", "allow @friends.test",
                                                 "block @spam.test"])
        bad = server.cli("user", "senders", ALICE, "--block", "not a sender", check=False)
        self.assertNotEqual(bad.returncode, 0)
        self.assertIn("expected an address", bad.stderr)
        server.start()
        try:
            def rcpt(sender, to):
                with mx(server, "127.0.2.9") as s:
                    s.ehlo("client.remote.test")
                    s.mail(sender)
                    code, text = s.rcpt(to)
                    if code == 250:
                        s.data(message(f"from {sender}"))
                    return code, text.decode()

            code, text = rcpt("x@spam.test", ALICE)
            self.assertEqual(code, 550)
            self.assertIn("5.7.1", text)
            self.assertIn("blocked by the recipient", text)
            self.assertEqual(rcpt("x@spam.test", bob)[0], 451)  # bob blocks nobody: greylisted
            self.assertEqual(rcpt("friend@good.test", ALICE)[0], 250)  # allowed: no greylisting
            self.assertEqual(rcpt("pal@friends.test", ALICE)[0], 250)
            self.assertEqual(rcpt("stranger@good.test", ALICE)[0], 451)
            # Taken off the list, the friend is greylisted like anyone else.
            server.cli("user", "senders", ALICE, "--remove", "friend@good.test")
            wait_for(lambda: rcpt("friend@good.test", ALICE)[0] == 451, timeout=10,
                     what="the changed list to apply")
        finally:
            server.stop()
        inbox = server.messages(ALICE)
        subjects = {m.split(b"Subject: ")[1].split(b"\r\n")[0] for m in inbox}
        # (The friend's messages until the changed list applied are there too.)
        self.assertEqual(subjects, {b"burst from friend@good.test", b"burst from pal@friends.test"})
        self.assertEqual(server.messages(ALICE, "Junk"), [])
        self.assertTrue(all(b"X-Spam-Score: 5 (dnsbl: fcrdns)" in m for m in inbox),
                        "scored as Junk, delivered to the inbox by the user's allow list")
        lines = [e for e in log_events(server, "shardmail::antispam") if e.get("check") == "sender_list"]
        self.assertIn("block", [e["verdict"] for e in lines])
        self.assertIn("allow", [e["verdict"] for e in lines])


class Pregreet(unittest.TestCase):
    def test_a_client_that_talks_first_is_refused_and_a_polite_one_is_not(self):
        server = Server(settings={"antispam.exempt_networks": "[]",
                                  "antispam.greet_delay_ms": "400"})
        server.add_user(ALICE, "pw")
        server.start()
        try:
            with socket.create_connection(("127.0.0.1", server.ports["smtp"]), timeout=10,
                                          source_address=("127.0.0.7", 0)) as raw:
                raw.sendall(b"EHLO spam.test\r\nMAIL FROM:<s@spam.test>\r\n")
                reply = raw.recv(500).decode()
                self.assertTrue(reply.startswith("554 5.7.1"), reply)
                self.assertIn("talked before my greeting", reply)
                self.assertEqual(raw.recv(500), b"")  # and disconnected
            with mx(server, "127.0.0.8") as s:
                self.assertEqual(s.sendmail("x@remote.example", [ALICE], message("polite")), {})
            lines = [e for e in log_events(server, "shardmail::antispam")
                     if e.get("check") == "pregreet"]
            self.assertEqual([e["ip"] for e in lines], ["127.0.0.7"])
        finally:
            server.stop()
        self.assertEqual(len(server.messages(ALICE)), 1)


if __name__ == "__main__":
    unittest.main()
