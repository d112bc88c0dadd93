"""Real IMAP sync clients against the real server, two-way: isync's `mbsync` and
OfflineIMAP (offlineimap3).

mbsync relies on UIDPLUS (APPENDUID), UIDVALIDITY, flags, EXPUNGE and LIST; it is a
client this project did not write and one operators use. Mail delivered over SMTP is
pulled byte-exact into a local Maildir; a local flag change, a local deletion and a new
local folder with a message are pushed; a change made on the server (imaplib) comes
back. The same for OfflineIMAP. Each is skipped only when its client is not
installed (.ci/run installs both).
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

    def sync(self, network_log=False):
        debug = ["-Dn"] if network_log else []
        r = subprocess.run(["mbsync", *debug, "-c", os.path.join(self.local, "rc"), "all"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r.stdout + r.stderr

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
        # mbsync turns on COMPRESS=DEFLATE (RFC 4978) when offered: this sync, and
        # every later one, runs deflated.
        log = self.sync(network_log=True)
        self.assertIn("COMPRESS DEFLATE", log)
        self.assertRegex(log, r"\d+ OK DEFLATE active")
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


OFFLINE_USER = f"offline@{DOMAIN}"


def read(path):
    with open(path, "rb") as f:
        return f.read()


def maildir_files(root, folder):
    return sorted(glob.glob(os.path.join(root, folder, "cur", "*")) +
                  glob.glob(os.path.join(root, folder, "new", "*")))


@unittest.skipUnless(shutil.which("offlineimap"), "offlineimap (offlineimap3) is not installed")
class OfflineImapTwoWay(unittest.TestCase):
    """OfflineIMAP, the other common sync client: it reads UIDPLUS, UIDVALIDITY,
    flags and folders its own way (one connection per folder, FETCH of flags and
    bodies, APPEND with flags, STORE, EXPUNGE)."""

    @classmethod
    def setUpClass(cls):
        import hashlib
        import ssl

        cls.server = Server()
        cls.server.add_user(OFFLINE_USER, "pw")
        cls.server.start()
        cls.local = tempfile.mkdtemp(prefix="offlineimap-")
        with open(f"{cls.server.data_dir}/tls/cert.pem") as f:
            der = ssl.PEM_cert_to_DER_cert(f.read())
        fingerprint = hashlib.sha512(der).hexdigest()
        with open(os.path.join(cls.local, "rc"), "w") as f:
            f.write(f"""
[general]
accounts = sm
metadata = {cls.local}/meta
ui = basic

[Account sm]
localrepository = local
remoterepository = remote

[Repository local]
type = Maildir
localfolders = {cls.local}/mail

[Repository remote]
type = IMAP
remotehost = 127.0.0.1
remoteport = {cls.server.ports['imaps']}
remoteuser = {OFFLINE_USER}
remotepass = pw
ssl = yes
cert_fingerprint = {fingerprint}
createfolders = True
""")

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.local, ignore_errors=True)

    def sync(self):
        r = subprocess.run(["offlineimap", "-c", os.path.join(self.local, "rc"), "-o", "-u", "basic"],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertNotIn("ERROR", r.stdout + r.stderr, r.stdout + r.stderr)

    def imap(self):
        return self.server.imaps(OFFLINE_USER)

    def test_two_way_sync_with_flags_and_folders(self):
        for i in range(4):
            self.server.send("x@remote.example", [OFFLINE_USER],
                             f"Subject: offline {i}\r\n\r\nbody {i}\r\n".encode())
        stored = self.server.messages(OFFLINE_USER)
        self.sync()
        mail = os.path.join(self.local, "mail")
        files = maildir_files(mail, "INBOX")
        # Byte-exact against what the server stored (OfflineIMAP writes LF line ends).
        local = sorted(read(f) for f in files)
        self.assertEqual(local, sorted(m.replace(b"\r\n", b"\n") for m in stored))
        for folder in ("Sent", "Drafts", "Trash", "Junk"):
            self.assertTrue(os.path.isdir(os.path.join(mail, folder)), folder)

        # Local changes: flags on one, delete another, a new folder with a message.
        first, second = files[0], files[1]
        os.rename(first, first.split(":2,")[0].replace("/new/", "/cur/") + ":2,FS")
        os.remove(second)
        archive = os.path.join(mail, "Archive")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(archive, sub))
        new_message = b"Subject: written offline\r\n\r\nkept locally first\r\n"
        with open(os.path.join(archive, "new", "1.local.host:2,S"), "wb") as f:
            f.write(new_message.replace(b"\r\n", b"\n"))
        self.sync()

        m = self.imap()
        typ, data = m.select("INBOX")
        self.assertEqual(int(data[0]), 3, "the deleted message is expunged on the server")
        typ, data = m.fetch("1:*", "(FLAGS)")
        flagged = [d for d in data if b"\\Flagged" in d and b"\\Seen" in d]
        self.assertEqual(len(flagged), 1, data)
        typ, data = m.select("Archive")
        self.assertEqual(typ, "OK")
        typ, data = m.fetch("1", "(FLAGS BODY.PEEK[])")
        self.assertIn(b"\\Seen", data[0][0])
        # OfflineIMAP may add its own X-OfflineIMAP header to find an upload again.
        body = re.sub(rb"(?m)^X-OfflineIMAP: .*\r\n", b"", data[0][1])
        self.assertEqual(body, new_message)

        # A change on the server comes back: answered everywhere, one expunged.
        m.select("INBOX")
        m.store("1:*", "+FLAGS", "(\\Answered)")
        m.store("3", "+FLAGS", "(\\Deleted)")
        m.expunge()
        m.logout()
        self.sync()
        files = maildir_files(mail, "INBOX")
        self.assertEqual(len(files), 2)
        for f in files:
            self.assertIn("R", f.split(":2,")[1], f"answered flag pulled into {f}")
