"""Import (issue 12) against the real binary, checked with Python's imaplib.

`export` then `import` into a new account round-trips byte-exact with the same flags,
INTERNALDATE and mailbox names; a Dovecot-style Maildir++ tree (`.Folder.Sub`, LF line
ends, flags in the names) and an mbox file (mboxrd quoting, Status/X-Status flags, the
From line's date) arrive as IMAP clients expect; a running server's directory is
refused with a message saying what to do.
"""
import imaplib
import os
import shutil
import smtplib
import tempfile
import time
import unittest

from harness import DOMAIN, Server, tls_context


def imap(server, user):
    c = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=tls_context())
    c.login(user, "pw")
    return c


def mailbox_contents(server, user, box):
    """(flags, INTERNALDATE, bytes) of each message, in UID order."""
    c = imap(server, user)
    try:
        typ, _ = c.select(f'"{box}"', readonly=True)
        assert typ == "OK", box
        typ, data = c.fetch("1:*", "(FLAGS INTERNALDATE BODY.PEEK[])")
        out = []
        for item in data:
            if isinstance(item, tuple):
                meta = item[0].decode()
                flags = meta.split("FLAGS (")[1].split(")")[0]
                date = meta.split('INTERNALDATE "')[1].split('"')[0]
                out.append((sorted(flags.split()), date, item[1]))
        return out
    finally:
        c.logout()


class Import(unittest.TestCase):
    def test_export_then_import_round_trips_and_foreign_formats_arrive(self):
        server = Server()
        alice, copy, foreign = f"alice@{DOMAIN}", f"copy@{DOMAIN}", f"foreign@{DOMAIN}"
        for u in (alice, copy, foreign):
            server.add_user(u, "pw")
        server.start()
        try:
            with smtplib.SMTP(*server.smtp_address(), timeout=30) as s:
                for i in range(20):
                    s.sendmail("c@remote.example", [alice],
                               f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode())
            c = imap(server, alice)
            try:
                c.create("Work/2026")
                c.select("INBOX")
                c.store("1:5", "+FLAGS", "(\\Seen)")
                c.store("2", "+FLAGS", "(\\Flagged \\Answered)")
                c.copy("3:7", "Work/2026")
                c.append("Work/2026", "(\\Draft)", '"01-Jan-2020 10:00:00 +0000"',
                         b"Subject: drafted\r\n\r\nold\r\n")
            finally:
                c.logout()
            expected = {box: mailbox_contents(server, alice, box)
                        for box in ("INBOX", "Work/2026")}
            refused = server.cli("import", copy, "--maildir", server.data_dir, check=False)
            self.assertNotEqual(refused.returncode, 0)
            self.assertIn("stop it", refused.stderr)
        finally:
            server.stop()
        exported = server.export(alice)
        done = server.cli("import", copy, "--maildir", exported)
        self.assertIn("imported 26 messages", done.stdout)

        # Dovecot-style Maildir++: INBOX at the top, .Lists.Rust a folder, LF endings.
        maildir = tempfile.mkdtemp(prefix="shardmail-maildir-")
        for folder in ("", ".Lists.Rust"):
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(maildir, folder, sub))
        files = [("", "cur", "1700000000.M1.host:2,S", b"Subject: read\n\nhi\n"),
                 ("", "new", "1700000001.M2.host", b"Subject: new\n\nyo\n"),
                 (".Lists.Rust", "cur", "1700000002.M3.host:2,FR", b"Subject: list\n\nrust\n")]
        for folder, sub, name, data in files:
            path = os.path.join(maildir, folder, sub, name)
            with open(path, "wb") as f:
                f.write(data)
            os.utime(path, (1700000000, 1700000000))
        server.cli("import", foreign, "--maildir", maildir)
        mbox = os.path.join(maildir, "archive.mbox")
        with open(mbox, "wb") as f:
            f.write(b"From a@x Thu Nov 26 06:45:00 2026\nStatus: RO\nX-Status: F\n"
                    b"Subject: one\n\n>From the start\n\n"
                    b"From b@x Fri Nov 27 00:00:01 2026\nSubject: two\n\nbody\n")
        server.cli("import", foreign, "--mbox", mbox, "--mailbox", "Archive")
        shutil.rmtree(maildir)

        server.start()
        try:
            for box, want in expected.items():
                self.assertEqual(mailbox_contents(server, copy, box), want, box)
            inbox = mailbox_contents(server, foreign, "INBOX")
            self.assertEqual([m[2] for m in inbox],
                             [b"Subject: read\r\n\r\nhi\r\n", b"Subject: new\r\n\r\nyo\r\n"])
            self.assertEqual(inbox[0][0], ["\\Seen"])
            self.assertEqual(inbox[0][1], "14-Nov-2023 22:13:20 +0000")
            rust = mailbox_contents(server, foreign, "Lists/Rust")
            self.assertEqual(rust[0][0], ["\\Answered", "\\Flagged"])
            archive = mailbox_contents(server, foreign, "Archive")
            self.assertEqual(archive[0][2],
                             b"Status: RO\r\nX-Status: F\r\nSubject: one\r\n\r\nFrom the start\r\n")
            self.assertEqual(archive[0][0], ["\\Flagged", "\\Seen"])
            self.assertEqual(archive[1][1], "27-Nov-2026 00:00:01 +0000")
        finally:
            server.stop()


if __name__ == "__main__":
    unittest.main()
