"""A real IMAP sync client against the real server: isync's `mbsync`, two-way.

mbsync relies on UIDPLUS (APPENDUID), UIDVALIDITY, flags, EXPUNGE and LIST; it is a
client this project did not write and one operators use. Mail delivered over SMTP is
pulled byte-exact into a local Maildir; a local flag change, a local deletion and a new
local folder with a message are pushed; a change made on the server (imaplib) comes
back. Skipped only when mbsync is not installed (.ci/run installs it).
"""
import glob
import imaplib
import os
import re
import shutil
import smtplib
import subprocess
import tempfile
import unittest

from harness import DOMAIN, Server, tls_context

USER = f"sync@{DOMAIN}"


@unittest.skipUnless(shutil.which("mbsync"), "mbsync (isync) is not installed")
class MbsyncTwoWay(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server()
        cls.server.add_user(USER, "pw")
        cls.server.start()
        cls.local = tempfile.mkdtemp(prefix="mbsync-")
        os.makedirs(os.path.join(cls.local, "mail"))
        with open(os.path.join(cls.local, "rc"), "w") as f:
            f.write(f"""
IMAPAccount sm
Host 127.0.0.1
Port {cls.server.ports['imaps']}
User {USER}
Pass pw
SSLType IMAPS
CertificateFile {cls.server.data_dir}/tls/cert.pem

IMAPStore remote
Account sm

MaildirStore local
Path {cls.local}/mail/
Inbox {cls.local}/mail/INBOX
SubFolders Verbatim

Channel all
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
""")

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.local, ignore_errors=True)

    def sync(self):
        r = subprocess.run(["mbsync", "-c", os.path.join(self.local, "rc"), "all"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def local_files(self, folder):
        return sorted(glob.glob(os.path.join(self.local, "mail", folder, "cur", "*")) +
                      glob.glob(os.path.join(self.local, "mail", folder, "new", "*")))

    def imap(self):
        m = imaplib.IMAP4_SSL("127.0.0.1", self.server.ports["imaps"], ssl_context=tls_context(), timeout=20)
        m.login(USER, "pw")
        return m

    def test_two_way_sync(self):
        with smtplib.SMTP("127.0.0.1", self.server.ports["smtp"], timeout=20) as s:
            for i in range(4):
                s.sendmail("x@remote.example", [USER], f"Subject: sync {i}\r\n\r\nbody {i}\r\n".encode())
        stored = self.server.messages(USER)
        self.sync()
        files = self.local_files("INBOX")
        # mbsync keeps local Maildir files with LF line ends, and marks its copies
        # with an X-TUID header (its own transaction id).
        local = sorted(re.sub(rb"(?m)^X-TUID: .*\n", b"", open(f, "rb").read()) for f in files)
        self.assertEqual(local, sorted(m.replace(b"\r\n", b"\n") for m in stored))
        for folder in ("Sent", "Drafts", "Trash", "Junk"):
            self.assertTrue(os.path.isdir(os.path.join(self.local, "mail", folder)), folder)

        # Local changes: flag one message seen+flagged, delete another, add a folder
        # with a new message.
        first, second = files[0], files[1]
        base = first.split(":2,")[0]
        os.rename(first, base.replace("/new/", "/cur/") + ":2,FS")
        os.rename(second, second.split(":2,")[0].replace("/new/", "/cur/") + ":2,T")
        archive = os.path.join(self.local, "mail", "Archive")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(archive, sub))
        new_message = b"Subject: written offline\r\n\r\nkept locally first\r\n"
        with open(os.path.join(archive, "new", "1.local.host"), "wb") as f:
            f.write(new_message.replace(b"\r\n", b"\n"))  # uploaded with CRLF
        self.sync()

        m = self.imap()
        typ, data = m.select("INBOX")
        self.assertEqual(int(data[0]), 3, "the deleted message is expunged on the server")
        typ, data = m.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        flagged = [p for p in data if isinstance(p, tuple) and b"\\Flagged" in p[0] and b"\\Seen" in p[0]]
        self.assertEqual(len(flagged), 1, data)
        typ, data = m.select("Archive")
        self.assertEqual(typ, "OK")
        typ, data = m.fetch("1", "(BODY.PEEK[])")
        # mbsync tags what it uploads with X-TUID (to find it again after a crash).
        self.assertEqual(re.sub(rb"(?m)^X-TUID: .*\r\n", b"", data[0][1]), new_message)

        # A change on the server comes back: flag everything answered, delete one.
        m.select("INBOX")
        m.store("1:*", "+FLAGS", "(\\Answered)")
        m.store("3", "+FLAGS", "(\\Deleted)")
        m.expunge()
        m.logout()
        self.sync()
        files = self.local_files("INBOX")
        self.assertEqual(len(files), 2)
        for f in files:
            self.assertIn("R", f.split(":2,")[1], f"answered flag pulled into {f}")


if __name__ == "__main__":
    unittest.main()
