"""A milter for the tests, on Debian's python3-milter (libmilter underneath): run as
`/usr/bin/python3 milter_daemon.py PORT RECORD_FILE`.

What it does with a message is chosen by its Subject, `milter: ACTION`, at the end of
the message: accept, reject, reject_default, tempfail, discard, quarantine,
addheader, insheader, chgheader, replbody, slow. Every conversation is appended to
RECORD_FILE as one JSON line (what it was told: macros, connect, helo, envelope,
headers, body size), so the tests check both sides.
"""
import json
import sys
import threading
import time

import Milter

PORT, RECORD = sys.argv[1], sys.argv[2]
LOCK = threading.Lock()


class TestMilter(Milter.Base):
    def __init__(self):
        self.seen = {"headers": [], "rcpt": [], "body_bytes": 0}

    def connect(self, hostname, family, hostaddr):
        self.seen["connect"] = {"hostname": hostname, "addr": hostaddr[0] if hostaddr else None}
        self.seen["j"] = self.getsymval("j")
        self.seen["client_addr"] = self.getsymval("{client_addr}")
        return Milter.CONTINUE

    def hello(self, name):
        self.seen["helo"] = name
        return Milter.CONTINUE

    def envfrom(self, sender, *params):
        self.seen["from"] = sender
        self.seen["auth_authen"] = self.getsymval("{auth_authen}")
        self.seen["queue_id"] = self.getsymval("i")
        return Milter.CONTINUE

    def envrcpt(self, rcpt, *params):
        self.seen["rcpt"].append(rcpt)
        return Milter.CONTINUE

    def header(self, name, value):
        self.seen["headers"].append([name, value])
        return Milter.CONTINUE

    def eoh(self):
        return Milter.CONTINUE

    def body(self, chunk):
        self.seen["body_bytes"] += len(chunk)
        return Milter.CONTINUE

    def eom(self):
        subject = next((v for n, v in self.seen["headers"] if n.lower() == "subject"), "")
        action = subject.split("milter:", 1)[1].strip() if "milter:" in subject else "accept"
        self.seen["action"] = action
        with LOCK, open(RECORD, "a") as f:
            f.write(json.dumps(self.seen) + "\n")
        if action == "reject":
            self.setreply("550", "5.7.1", "Rejected by the test milter")
            return Milter.REJECT
        if action == "reject_default":
            return Milter.REJECT
        if action == "tempfail":
            self.setreply("451", "4.7.1", "Try later, says the test milter")
            return Milter.TEMPFAIL
        if action == "discard":
            return Milter.DISCARD
        if action == "quarantine":
            self.quarantine("held by the test milter")
        elif action == "addheader":
            self.addheader("X-Test-Milter", "added")
        elif action == "insheader":
            self.addheader("X-Test-First", "inserted", 0)
        elif action == "chgheader":
            self.chgheader("Subject", 1, "milter: changed")
            self.chgheader("X-Remove-Me", 1, None)
        elif action == "replbody":
            self.replacebody(b"replaced by the test milter\r\n")
        elif action == "slow":
            time.sleep(5)
        return Milter.ACCEPT


def main():
    Milter.factory = TestMilter
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.CHGBODY | Milter.QUARANTINE)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    Milter.runmilter("shardmail-test", f"inet:{PORT}@127.0.0.1", 60)


if __name__ == "__main__":
    main()
