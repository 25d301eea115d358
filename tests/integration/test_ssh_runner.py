"""SshRunner against a real sshd on a free loopback port, started and stopped by this test.

Proves the remote quoting end to end: argv words with spaces, quotes, `$`, `;` and globs reach
the remote process exactly as given, stdin is passed through, the exit code comes back.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from twisted.trial import unittest

from jailfarm.cmd import Cmd, Secret
from jailfarm.runner import LocalRunner, SshRunner
from tests.support import deferred_test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SshRunnerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="jfssh-"))
        os.chmod(self.dir, 0o700)
        for kind in ("host", "client"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / kind)],
                check=True,
            )
        (self.dir / "authorized_keys").write_text((self.dir / "client.pub").read_text())
        self.port = free_port()
        config = self.dir / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.dir}/host\n"
            f"AuthorizedKeysFile {self.dir}/authorized_keys\nPasswordAuthentication no\n"
            "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
            f"PidFile {self.dir}/sshd.pid\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        self.sshd = subprocess.Popen(
            [shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
            stderr=subprocess.PIPE,
        )
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            time.sleep(0.05)
        known = self.dir / "known_hosts"
        known.write_text(f"[127.0.0.1]:{self.port} {(self.dir / 'host.pub').read_text()}")
        self.runner = SshRunner(
            LocalRunner(),
            "127.0.0.1",
            port=self.port,
            identity_file=str(self.dir / "client"),
            known_hosts=str(known),
        )

    def tearDown(self) -> None:
        self.sshd.send_signal(signal.SIGTERM)
        self.sshd.wait(10)
        assert self.sshd.stderr is not None
        self.sshd.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @deferred_test
    async def test_argv_reaches_the_remote_process_exactly(self) -> None:
        words = [
            "a b",
            "it's",
            '"dq"',
            "$HOME",
            "; rm -rf /tmp/nothing",
            "*",
            "",
            "tab\there",
            "new\nline",
            "-n",
        ]
        script = 'for a in "$@"; do printf "<%s>" "$a"; done'
        result = await self.runner.run(Cmd(("sh", "-c", script, "sh", *words)))
        self.assertEqual(result.check().out, "".join(f"<{w}>" for w in words))

    @deferred_test
    async def test_env_stdin_exit_code_and_masked_secrets(self) -> None:
        cmd = Cmd(
            ("sh", "-c", 'read line; echo "$line/$TOKEN"; exit 3'),
            stdin=b"from stdin\n",
            env={"TOKEN": Secret("s3cr3t value")},
        )
        result = await self.runner.run(cmd)
        self.assertEqual(result.rc, 3)
        self.assertEqual(result.out, "from stdin/s3cr3t value\n")
        self.assertNotIn("s3cr3t", str(self.runner.wrap(cmd)))
        self.assertIs(result.cmd, cmd)

    @deferred_test
    async def test_unknown_host_key_is_refused(self) -> None:
        (self.dir / "known_hosts").write_text("")
        result = await self.runner.run(Cmd(("true",)))
        self.assertEqual(result.rc, 255)
        self.assertIn("Host key verification failed", result.err)
