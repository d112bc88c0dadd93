"""The Debian package (`cargo deb`, [package.metadata.deb]), inspected without installing it:
its control data, its files, and that the configuration it ships is one the packaged
binary accepts. CI also installs it for real (contrib/debian/smoke-test.sh)."""
import os
import shutil
import subprocess
import tempfile
import unittest

from harness import BIN

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


@unittest.skipUnless(shutil.which("dpkg-deb") and shutil.which("cargo-deb"),
                     "needs dpkg-deb and cargo-deb (.ci/run installs cargo-deb)")
class Package(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="shardmail-deb-")
        # The binary under test is a debug build: package it as it is (no rebuild).
        profile = "release" if "/release/" in os.path.abspath(BIN) else "dev"
        deb = os.path.join(cls.dir, "shardmail.deb")
        subprocess.run(["cargo", "deb", "--profile", profile, "--no-build", "--fast",
                        "--no-strip", "--quiet", "-o", deb], cwd=ROOT, check=True,
                       capture_output=True, timeout=300)
        cls.deb = deb
        cls.tree = os.path.join(cls.dir, "tree")
        subprocess.run(["dpkg-deb", "-x", cls.deb, cls.tree], check=True, timeout=300)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def field(self, name):
        return subprocess.run(["dpkg-deb", "--field", self.deb, name], check=True,
                              capture_output=True, text=True, timeout=60).stdout.strip()

    def test_control_fields(self):
        self.assertEqual(self.field("Package"), "shardmail")
        with open(os.path.join(ROOT, "Cargo.toml")) as f:
            version = next(l.split('"')[1] for l in f if l.startswith("version = "))
        self.assertEqual(self.field("Version"), f"{version}-1")
        self.assertIn("mail-transport-agent", self.field("Provides"))
        control = subprocess.run(["dpkg-deb", "--ctrl-tarfile", self.deb], check=True,
                                 capture_output=True, timeout=60).stdout
        self.assertIn(b"conffiles", control)
        self.assertIn(b"postinst", control)

    def test_files_and_shipped_configuration(self):
        for path in ["usr/bin/shardmail", "usr/lib/systemd/system/shardmail.service",
                     "etc/shardmail/shardmail.toml", "etc/fail2ban/filter.d/shardmail.conf",
                     "usr/share/doc/shardmail/config.md"]:
            self.assertTrue(os.path.exists(os.path.join(self.tree, path)), path)
        binary = os.path.join(self.tree, "usr", "bin", "shardmail")
        config = os.path.join(self.tree, "etc", "shardmail", "shardmail.toml")
        printed = subprocess.run([binary, "--config", config, "check-config"], check=True,
                                 capture_output=True, text=True, timeout=60).stdout
        self.assertIn('data_dir = "/var/lib/shardmail"', printed)
        with open(os.path.join(self.tree, "usr/lib/systemd/system/shardmail.service")) as f:
            unit = f.read()
        self.assertIn("ExecReload=/usr/bin/shardmail", unit)
        self.assertIn("--config /etc/shardmail/shardmail.toml", unit)


if __name__ == "__main__":
    unittest.main()
