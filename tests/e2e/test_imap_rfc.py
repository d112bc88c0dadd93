"""IMAP details a careful client checks (issue 13), through Python's imaplib against
the real server: \\Recent seen by exactly one session, UNAUTHENTICATE (RFC 8437),
OBJECTID (RFC 8474), WITHIN (RFC 5032), CREATE-SPECIAL-USE (RFC 6154), LITERAL-
before login (RFC 7888), SEARCHRES (RFC 5182), SORT and THREAD (RFC 5256), PREVIEW (RFC 8970), UTF8=ACCEPT (RFC 6855), MULTIAPPEND (RFC 3502), CATENATE (RFC 4469), COMPRESS=DEFLATE (RFC 4978),
METADATA (RFC 5464), SAVEDATE (RFC 8514), NOTIFY (RFC 5465),
CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267)."""

import re
import time
import zlib

import imaplib
import unittest

from harness import DOMAIN, Server, tls_context


def message(to, subject):
    return (
        f"From: Carol <carol@remote.example>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject}@remote.example>\r\n\r\nHello.\r\n"
    ).encode()


# imaplib predates RFC 4978 and RFC 8437: teach it the commands and their states.
imaplib.Commands.setdefault("COMPRESS", ("AUTH", "SELECTED"))
imaplib.Commands.setdefault("UNAUTHENTICATE", ("AUTH", "SELECTED"))
imaplib.Commands.setdefault("SETMETADATA", ("AUTH", "SELECTED"))
imaplib.Commands.setdefault("GETMETADATA", ("AUTH", "SELECTED"))
imaplib.Commands.setdefault("NOTIFY", ("AUTH", "SELECTED"))


class DeflateIMAP(imaplib.IMAP4_SSL):
    """imaplib with COMPRESS=DEFLATE: after `compress()`, every byte both ways is raw
    deflate, each write sync-flushed (RFC 4978 §4)."""

    def compress(self):
        typ, data = self._simple_command("COMPRESS", "DEFLATE")
        assert typ == "OK", data
        self._deflate = zlib.compressobj(1, zlib.DEFLATED, -15)
        self._inflate = zlib.decompressobj(-15)
        self._plain = b""
        self.compressed_in = 0

    def _fill(self):
        chunk = self.sock.recv(16384)
        if not chunk:
            raise imaplib.IMAP4.abort("connection closed")
        self.compressed_in += len(chunk)
        self._plain += self._inflate.decompress(chunk)

    def read(self, size):
        if not hasattr(self, "_deflate"):
            return super().read(size)
        while len(self._plain) < size:
            self._fill()
        data, self._plain = self._plain[:size], self._plain[size:]
        return data

    def readline(self):
        if not hasattr(self, "_deflate"):
            return super().readline()
        while b"\n" not in self._plain:
            self._fill()
        at = self._plain.index(b"\n") + 1
        line, self._plain = self._plain[:at], self._plain[at:]
        return line

    def send(self, data):
        if not hasattr(self, "_deflate"):
            return super().send(data)
        self.sock.sendall(self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH))


class ImapRfc(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server()
        for name in ("recent", "objects", "saved", "sorted", "utf8", "append", "deflate", "meta", "notify", "context"):
            cls.server.add_user(f"{name}@{DOMAIN}", "pw")
        # One account per shard: the second login must move the session.
        cls.unauth = cls.server.users_on_every_shard("unauth")
        cls.server.start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def deliver(self, to, subject):
        self.server.send("carol@remote.example", [to], message(to, subject))

    def login(self, user):
        return self.server.imaps(user)

    def test_recent_is_seen_by_exactly_one_session(self):
        user = f"recent@{DOMAIN}"
        self.deliver(user, "one")
        self.deliver(user, "two")
        first, second = self.login(user), self.login(user)
        try:
            first.select("INBOX")
            self.assertEqual(first.response("RECENT"), ("RECENT", [b"2"]))
            self.assertEqual(first.search(None, "RECENT")[1], [b"1 2"])
            second.select("INBOX")
            self.assertEqual(second.response("RECENT"), ("RECENT", [b"0"]))
            self.assertEqual(second.search(None, "RECENT")[1], [b""])
            self.assertEqual(second.search(None, "OLD")[1], [b"1 2"])
            # A delivery while both are selected: the first to hear of it takes it.
            self.deliver(user, "three")
            second.noop()
            self.assertEqual(second.search(None, "NEW")[1], [b"3"])
            first.noop()
            self.assertEqual(first.search(None, "RECENT")[1], [b"1 2"])
            typ, data = first.fetch("3", "(FLAGS)")
            self.assertNotIn(b"\\Recent", data[0])
        finally:
            first.logout()
            second.logout()

    def test_unauthenticate_then_log_in_as_someone_else(self):
        first, other = self.unauth[0], self.unauth[-1]
        self.assertNotEqual(first, other, "needs two shards")
        m = self.login(first)
        try:
            self.assertIn("UNAUTHENTICATE", m.capabilities)
            m.select("INBOX")
            typ, data = m._simple_command("UNAUTHENTICATE")
            self.assertEqual(typ, "OK", data)
            m.state = "NONAUTH"
            # The other user lives on another shard: the login moves the session.
            self.assertEqual(m.login(other, "pw")[0], "OK")
            self.deliver(other, "for-other")
            typ, data = m.select("INBOX")
            self.assertEqual(typ, "OK")
            typ, data = m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            self.assertIn(b"for-other", data[0][1])
        finally:
            m.logout()

    def test_objectid_within_and_create_special_use(self):
        user = f"objects@{DOMAIN}"
        self.deliver(user, "kept")
        m = self.login(user)
        try:
            caps = m.capability()[1][0].split()
            for cap in (b"OBJECTID", b"WITHIN", b"CREATE-SPECIAL-USE", b"LITERAL+"):
                self.assertIn(cap, caps)
            typ, data = m.create('Archive2 (USE (\\Archive))')
            self.assertEqual(typ, "OK", data)
            self.assertIn(b"MAILBOXID (", data[0])
            typ, data = m.list('""', "*")
            self.assertIn(b'(\\HasNoChildren \\Archive) "/" "Archive2"', b"\n".join(data))
            m.select("INBOX")
            self.assertEqual(m.response("MAILBOXID")[1][0][:2], b"(F")
            typ, data = m.fetch("1", "(EMAILID THREADID)")
            email_id = re.search(rb"EMAILID \((M[0-9a-f]+)\)", data[0]).group(1)
            self.assertIn(b"THREADID NIL", data[0])
            typ, data = m.fetch("1", "(PREVIEW)")
            self.assertIn(b'PREVIEW "Hello."', data[0])
            self.assertEqual(m.copy("1", "Archive2")[0], "OK")
            self.assertEqual(m.search(None, "YOUNGER", "3600")[1], [b"1"])
            self.assertEqual(m.search(None, "OLDER", "3600")[1], [b""])
            typ, data = m.rename("Archive2", "Archive3")
            self.assertEqual(typ, "OK")
            m.select("Archive3")
            typ, data = m.fetch("1", "(EMAILID)")
            self.assertIn(email_id, data[0])
            self.assertEqual(m.search(None, "EMAILID", email_id.decode())[1], [b"1"])
        finally:
            m.logout()

    def test_searchres_dollar_in_fetch_and_store(self):
        user = f"saved@{DOMAIN}"
        for subject in ("keep-a", "other", "keep-b"):
            self.deliver(user, subject)
        m = self.login(user)
        try:
            self.assertIn(b"SEARCHRES", m.capability()[1][0].split())
            m.select("INBOX")
            typ, data = m._simple_command("SEARCH", "RETURN", "(SAVE)", "SUBJECT", "keep")
            self.assertEqual(typ, "OK", data)
            self.assertEqual(m.store("$", "+FLAGS", "(\\Flagged)")[0], "OK")
            self.assertEqual(m.search(None, "FLAGGED")[1], [b"1 3"])
            typ, data = m.fetch("$", "(UID)")
            self.assertEqual([d for d in data if d], [b"1 (UID 1)", b"3 (UID 3)"])
        finally:
            m.logout()

    def test_sort_and_thread(self):
        user = f"sorted@{DOMAIN}"
        for subject in ("Re: beta", "alpha", "beta", "Fwd: alpha"):
            self.deliver(user, subject)
        m = self.login(user)
        try:
            caps = m.capability()[1][0].split()
            for cap in (b"SORT", b"SORT=DISPLAY", b"ESORT", b"THREAD=ORDEREDSUBJECT", b"THREAD=REFERENCES"):
                self.assertIn(cap, caps)
            m.select("INBOX")
            typ, data = m.sort("(SUBJECT)", "UTF-8", "ALL")
            self.assertEqual((typ, data), ("OK", [b"2 4 1 3"]))
            # Equal keys stay in mailbox order, REVERSE or not (RFC 5256 §3).
            typ, data = m.sort("(REVERSE SUBJECT)", "UTF-8", "ALL")
            self.assertEqual(data, [b"1 3 2 4"])
            typ, data = m.uid("SORT", "(SUBJECT)", "UTF-8", "ALL")
            self.assertEqual(data, [b"2 4 1 3"])
            typ, data = m.thread("ORDEREDSUBJECT", "UTF-8", "ALL")
            self.assertEqual((typ, data), ("OK", [b"(1 3)(2 4)"]))
            # REFERENCES without References headers gathers by base subject, a
            # reply under the message it replies to (RFC 5256 §4 step 5).
            typ, data = m.thread("REFERENCES", "UTF-8", "ALL")
            self.assertEqual(typ, "OK")
            self.assertEqual(sorted(re.findall(rb"\(\d+ \d+\)", data[0])), [b"(2 4)", b"(3 1)"])
        finally:
            m.logout()

    def test_utf8_accept_names(self):
        user = f"utf8@{DOMAIN}"
        m = self.login(user)
        try:
            self.assertIn(b"UTF8=ACCEPT", m.capability()[1][0].split())
            typ, data = m.enable("UTF8=ACCEPT")
            self.assertEqual(typ, "OK", data)
            self.assertEqual(m.create('"Entwürfe"')[0], "OK")
            typ, data = m.list('""', '"Entw*"')
            # Sent as UTF-8 (quoted, or as here a literal: it is 8-bit).
            flat = b"".join(p if isinstance(p, bytes) else p[0] + p[1] for p in data)
            self.assertIn("Entwürfe".encode(), flat)
        finally:
            m.logout()
        classic = self.login(user)
        try:
            typ, data = classic.list('""', "Entw*")
            self.assertIn(b'"Entw&APw-rfe"', data[0])
        finally:
            classic.logout()

    def raw_command(self, m, tag, pieces):
        """Sends a command of text `pieces` and literal (bytes) pieces, waiting for the
        continuation before each synchronizing literal; returns the tagged reply."""
        for piece in pieces:
            if isinstance(piece, bytes):
                m.send(b"{%d}\r\n" % len(piece))
                line = m.readline()
                self.assertTrue(line.startswith(b"+"), line)
                m.send(piece)
            else:
                m.send(piece.encode())
        m.send(b"\r\n")
        while True:
            line = m.readline()
            self.assertTrue(line, "connection closed")
            if line.startswith(tag.encode() + b" "):
                return line

    def test_multiappend_and_catenate(self):
        user = f"append@{DOMAIN}"
        m = self.login(user)
        try:
            self.assertIn("MULTIAPPEND", m.capabilities)
            self.assertIn("CATENATE", m.capabilities)
            small = b"Subject: small\r\n\r\nhello\r\n"
            # Past store.spool_threshold_bytes: the two messages share one spool file
            # and the large one is written from it without a copy.
            large = b"Subject: large\r\n\r\n" + b"0123456789abcde\r\n" * 30_000
            reply = self.raw_command(
                m, "m1", ["m1 APPEND INBOX (\\Seen) ", small, ' "01-Jan-2026 10:00:00 +0000" ', large]
            )
            self.assertRegex(reply, rb"^m1 OK \[APPENDUID \d+ 1:2\]")
            m.select("INBOX")
            typ, data = m.fetch("1:2", "(FLAGS BODY.PEEK[])")
            self.assertEqual(typ, "OK")
            self.assertEqual(data[0][1], small)
            self.assertIn(b"\\Seen", data[0][0])
            self.assertEqual(data[2][1], large)
            # A bad flag on the second message: nothing of the command is stored.
            reply = self.raw_command(m, "m2", ["m2 APPEND INBOX ", small, " (\\Bogus) {3+}\r\nabc"])
            self.assertTrue(reply.startswith(b"m2 BAD"), reply)
            m.noop()
            self.assertEqual(m.search(None, "ALL")[1], [b"1 2"])
            # CATENATE: a new header, then the stored message's text by URL.
            typ, data = m.status("INBOX", "(UIDVALIDITY)")
            validity = re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1).decode()
            head = b"Subject: forwarded\r\n\r\n"
            reply = self.raw_command(
                m,
                "m3",
                ["m3 APPEND Drafts CATENATE (TEXT ", head,
                 f' URL "/INBOX;UIDVALIDITY={validity}/;UID=1/;SECTION=TEXT")'],
            )
            self.assertTrue(reply.startswith(b"m3 OK [APPENDUID"), reply)
            reply = self.raw_command(m, "m4", ['m4 APPEND Drafts CATENATE (URL "/INBOX/;UID=9")'])
            self.assertTrue(reply.startswith(b"m4 NO [BADURL /INBOX/;UID=9]"), reply)
            m.select("Drafts")
            typ, data = m.fetch("1:*", "(BODY.PEEK[])")
            self.assertEqual(len([d for d in data if isinstance(d, tuple)]), 1, data)
            self.assertEqual(data[0][1], head + b"hello\r\n")
        finally:
            m.logout()

    def test_compress_deflate_survives_a_move_between_shards(self):
        user = f"deflate@{DOMAIN}"
        body = "".join(f"line {i} of a long and repetitive message\r\n" for i in range(40_000))
        self.server.send("carol@remote.example", [user],
                         f"Subject: big\r\n\r\n{body}".encode())
        m = DeflateIMAP("127.0.0.1", self.server.ports["imaps"], ssl_context=tls_context(), timeout=20)
        try:
            self.assertIn("COMPRESS=DEFLATE", m.capabilities)
            m.login(user, "pw")
            m.compress()
            typ, data = m._simple_command("COMPRESS", "DEFLATE")
            self.assertEqual(typ, "NO")
            self.assertIn(b"[COMPRESSIONACTIVE]", data[0])
            m.select("INBOX")
            typ, data = m.fetch("1", "(BODY.PEEK[TEXT])")
            self.assertEqual(data[0][1], body.encode())
            # 1.7 MB of text arrived as a small fraction of that.
            self.assertLess(m.compressed_in, len(body) // 5)
            # UNAUTHENTICATE, then a user on every shard: the deflated session moves
            # to the shard that owns each account, its deflate state with it.
            for other in self.unauth:
                typ, _ = m._simple_command("UNAUTHENTICATE")
                self.assertEqual(typ, "OK")
                m.state = "NONAUTH"
                typ, _ = m.login(other, "pw")
                self.assertEqual(typ, "OK")
                typ, data = m.select("INBOX")
                self.assertEqual(typ, "OK")
                self.assertEqual(m.noop()[0], "OK")
        finally:
            m.logout()

    def test_compress_bomb_is_bounded_like_any_input(self):
        # 32 MB of one line, deflated to about 32 KB: it inflates only into the
        # connection's input buffer, so it is refused as an over-long line, and a
        # bystander is served meanwhile.
        user = f"deflate@{DOMAIN}"
        bystander = self.login(user)
        m = DeflateIMAP("127.0.0.1", self.server.ports["imaps"], ssl_context=tls_context(), timeout=30)
        try:
            m.login(user, "pw")
            m.compress()
            bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
            sent = 0
            for _ in range(32):
                piece = bomb.compress(b"x" * (1 << 20))
                m.sock.sendall(piece)
                sent += len(piece)
            self.assertLess(sent, 1 << 20)
            self.assertEqual(bystander.noop()[0], "OK")
            m._deflate = bomb
            m.send(b"\r\nz1 NOOP\r\n")
            lines = [m.readline()]
            while not lines[-1].startswith(b"z1 "):
                lines.append(m.readline())
            self.assertTrue(lines[0].startswith(b"* BAD Command line longer than"), lines)
            self.assertTrue(lines[-1].startswith(b"z1 OK"), lines)
        finally:
            m.logout()
            bystander.logout()

    def test_metadata_survives_kill_9(self):
        user = f"meta@{DOMAIN}"
        m = self.login(user)
        try:
            self.assertIn("METADATA", m.capabilities)
            self.assertIn("METADATA-SERVER", m.capabilities)
            typ, data = m._simple_command("SETMETADATA", "INBOX", '(/private/comment "kept through a crash")')
            self.assertEqual(typ, "OK", data)
            typ, data = m._simple_command("SETMETADATA", '""', '(/shared/comment "server-wide")')
            self.assertEqual(typ, "OK", data)
        finally:
            m.logout()
        # Acknowledged means durable: kill -9 and start again.
        self.server.kill()
        self.server.start()
        m = self.login(user)
        try:
            typ, data = m._simple_command("GETMETADATA", "INBOX", "/private/comment")
            self.assertEqual(typ, "OK", data)
            self.assertEqual(m.untagged_responses.pop("METADATA"),
                             [b'"INBOX" (/private/comment "kept through a crash")'])
            typ, data = m._simple_command("GETMETADATA", '""', "(/shared/comment)")
            self.assertEqual(m.untagged_responses.pop("METADATA"), [b'"" (/shared/comment "server-wide")'])
        finally:
            m.logout()

    def test_savedate(self):
        user = f"meta@{DOMAIN}"
        self.deliver(user, "saved")
        m = self.login(user)
        try:
            self.assertIn("SAVEDATE", m.capabilities)
            m.select("INBOX")
            typ, data = m.fetch("1:*", "(INTERNALDATE SAVEDATE)")
            self.assertEqual(typ, "OK")
            self.assertRegex(data[-1], rb'SAVEDATE "\d{2}-\w{3}-\d{4} \d{2}:\d{2}:\d{2} \+0000"')
            typ, data = m.search(None, "SAVEDATESUPPORTED")
            self.assertNotEqual(data, [b""])
            typ, data = m.search(None, "SAVEDBEFORE", "1-Jan-2000")
            self.assertEqual(data, [b""])
        finally:
            m.logout()

    def test_notify_pushes_changes_without_a_command(self):
        user = f"notify@{DOMAIN}"
        watcher = self.login(user)
        other = self.login(user)
        try:
            self.assertIn("NOTIFY", watcher.capabilities)
            watcher.create("Lists")
            watcher.select("INBOX")
            typ, data = watcher._simple_command(
                "NOTIFY", "SET", "(SELECTED (MessageNew (UID) MessageExpunge))",
                "(PERSONAL (MessageNew MessageExpunge MailboxName))")
            self.assertEqual(typ, "OK", data)
            # A delivery to INBOX, an APPEND to another mailbox, a new mailbox: each
            # arrives on the watching connection with no command sent.
            self.deliver(user, "pushed")
            other.append("Lists", None, None, message(user, "to-lists"))
            other.create("Fresh")
            wanted = [rb"^\* 1 EXISTS", rb"^\* 1 FETCH \(UID 1\)",
                      rb'^\* STATUS "Lists" \(MESSAGES 1 ', rb'^\* LIST \(\) "/" "Fresh"']
            seen = []
            watcher.sock.settimeout(10)
            while wanted and len(seen) < 50:
                line = watcher.readline()
                self.assertTrue(line, f"closed; seen {seen}")
                seen.append(line)
                wanted = [w for w in wanted if not re.match(w, line)]
            self.assertEqual(wanted, [], seen)
            typ, data = watcher._simple_command("NOTIFY", "NONE")
            self.assertEqual(typ, "OK", data)
        finally:
            watcher.logout()
            other.logout()

    def test_context_search_updates_a_live_result(self):
        user = f"context@{DOMAIN}"
        self.deliver(user, "first")
        m = self.login(user)
        try:
            self.assertIn("CONTEXT=SEARCH", m.capabilities)
            m.select("INBOX")
            typ, data = m.uid("SEARCH", "RETURN", "(UPDATE ALL COUNT)", "UNSEEN")
            self.assertEqual(typ, "OK")
            first = m.untagged_responses.pop("ESEARCH")
            self.assertRegex(first[0], rb'^\(TAG "\w+"\) UID ALL 1 COUNT 1$')
            self.deliver(user, "second")
            m.noop()
            updates = m.untagged_responses.pop("ESEARCH", [])
            self.assertTrue(any(b"ADDTO (2 2)" in u for u in updates), updates)
            self.assertTrue(any(b"COUNT 2" in u for u in updates), updates)
            # CONTEXT=SORT: by subject, "first" < "second" < "third"; PARTIAL pages.
            self.assertIn("CONTEXT=SORT", m.capabilities)
            typ, _ = m.uid("SORT", "RETURN", "(UPDATE ALL PARTIAL 1:1)", "(SUBJECT)", "UTF-8", "ALL")
            self.assertEqual(typ, "OK")
            first = m.untagged_responses.pop("ESEARCH")
            self.assertRegex(first[0], rb"UID ALL 1:2 PARTIAL \(1:1 1\)$")
            sort_tag = re.match(rb'\(TAG "(\w+)"\)', first[0]).group(1)
            self.deliver(user, "third")
            m.noop()
            updates = m.untagged_responses.pop("ESEARCH", [])
            self.assertIn(b'(TAG "%s") UID ADDTO (3 3)' % sort_tag, updates)
        finally:
            m.logout()

    def test_compress_slots_are_bounded_server_wide(self):
        server = Server(settings={"limits.imap_compress_sessions_max": "1"})
        server.add_user(f"slots@{DOMAIN}", "pw")
        server.start()
        try:
            def session():
                m = DeflateIMAP("127.0.0.1", server.ports["imaps"], ssl_context=tls_context(), timeout=20)
                m.login(f"slots@{DOMAIN}", "pw")
                return m
            first, second = session(), session()
            first.compress()
            typ, data = second._simple_command("COMPRESS", "DEFLATE")
            self.assertEqual(typ, "NO")
            self.assertIn(b"[LIMIT]", data[0])
            self.assertIn(b"limits.imap_compress_sessions_max", data[0])
            self.assertEqual(second.noop()[0], "OK")  # goes on uncompressed
            first.logout()
            # The slot is free again once the deflating connection is gone.
            for _ in range(50):
                typ, data = second._simple_command("COMPRESS", "DEFLATE")
                if typ == "OK":
                    break
                time.sleep(0.1)
            self.assertEqual(typ, "OK", data)
            second._deflate = zlib.compressobj(1, zlib.DEFLATED, -15)
            second._inflate = zlib.decompressobj(-15)
            second._plain = b""
            second.compressed_in = 0
            self.assertEqual(second.noop()[0], "OK")
            second.logout()
        finally:
            server.stop()

    def test_literal_minus_before_login(self):
        m = imaplib.IMAP4_SSL(
            "127.0.0.1", self.server.ports["imaps"], ssl_context=tls_context(), timeout=20
        )
        try:
            self.assertIn("LITERAL-", m.capabilities)
            self.assertNotIn("LITERAL+", m.capabilities)
            # A 5,000-byte non-synchronizing literal before login is refused, its
            # bytes swallowed; the connection goes on.
            m.send(b"x1 LOGIN {5000+}\r\n" + b"u" * 5000 + b" pw\r\nx2 NOOP\r\n")
            first, second = m.readline(), m.readline()
            self.assertTrue(first.startswith(b"x1 NO [TOOBIG]"), first)
            self.assertTrue(second.startswith(b"x2 OK"), second)
        finally:
            m.shutdown()


if __name__ == "__main__":
    unittest.main()
