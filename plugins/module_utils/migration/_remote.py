# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How a migration's source reaches its target: ssh, and this collection's own code run there.

The source never relies on anything installed on the target but Python and criu: it sends the
module_utils it runs itself (from memory, never written to the target's disk) over the ssh session
and runs them there, so the target verifies and restores with exactly the code the source trusts.
ssh runs in batch mode with connect timeouts and keepalives, so a dead or silent link is noticed.
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import typing as t
import zlib

from ansible_collections.nucleus.criu.plugins.module_utils.migration import _wire as wire
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError

SSH = "/usr/bin/ssh"
PACKAGE = "ansible_collections.nucleus.criu.plugins.module_utils"
# AES-GCM first: about twice as fast as the default chacha20-poly1305 where the CPU has AES instructions.
KNOWN_HOSTS_NOTICE = re.compile(r"^Warning: Permanently added .* to the list of known hosts\.$")
CIPHER_PREFERENCE = "Ciphers=^aes128-gcm@openssh.com,aes256-gcm@openssh.com"
ENFORCED_OPTIONS = ["-o", "BatchMode=yes", "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "ControlPersist=no", "-T"]
# Reads our code from stdin with os.read (a buffered reader would swallow the frames that follow), imports it
# from memory and hands the session's stdin/stdout to the target's agent.
BOOTSTRAP = r"""
import importlib.abc, importlib.util, json, os, sys, zlib
def read(n):
    data = b""
    while len(data) < n:
        part = os.read(0, n - len(data))
        if not part:
            sys.exit("nucleus.criu: the payload was cut short")
        data += part
    return data
size = b""
while not size.endswith(b"\n"):
    size += read(1)
sources = json.loads(zlib.decompress(read(int(size))))
class Payload(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name in sources:
            return importlib.util.spec_from_loader(name, self, is_package=sources[name][0])
        return None
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        exec(compile(sources[module.__name__][1], "nucleus.criu:" + module.__name__, "exec"), module.__dict__)
sys.meta_path.insert(0, Payload())
from ansible_collections.nucleus.criu.plugins.module_utils.migration import _target
_target.main()
"""


class SshTarget(t.NamedTuple):
    """How the source logs in to the target: the settings every session of the migration uses."""

    host: str
    port: t.Optional[int] = None
    user: t.Optional[str] = None
    key_file: t.Optional[str] = None
    extra_args: t.Sequence[str] = ()
    python: str = "/usr/bin/python3"
    connect_timeout: int = 10
    keepalive: int = 5
    compress: bool = False

    def argv(self, command: t.Sequence[str]) -> t.List[str]:
        """ssh argv running ``command`` on the target. For ssh the first value of an option wins: what the migration's
        safety rests on comes first (never a prompt that hangs a frozen workload, never a multiplexing socket or master
        that outlives or shares the session: a link cut must cut this session), then the caller's extra args, which
        override the rest (timeouts, cipher, compression)."""
        argv = [SSH] + ENFORCED_OPTIONS + list(self.extra_args) + [
            "-o", "ConnectTimeout=%d" % self.connect_timeout,
            "-o", "ServerAliveInterval=%d" % self.keepalive, "-o", "ServerAliveCountMax=3",
            "-o", CIPHER_PREFERENCE, "-o", "Compression=%s" % ("yes" if self.compress else "no"),
        ]
        if self.port:
            argv += ["-p", str(self.port)]
        if self.user:
            argv += ["-l", self.user]
        if self.key_file:
            argv += ["-i", self.key_file, "-o", "IdentitiesOnly=yes"]
        return argv + ["--", self.host, " ".join(shlex.quote(part) for part in command)]

    @property
    def label(self) -> str:
        return "%s%s%s" % (self.user + "@" if self.user else "", self.host, ":%d" % self.port if self.port else "")


def payload() -> bytes:
    """This collection's module_utils as loaded in this process (sources, from the AnsiballZ zip or the disk)."""
    sources: t.Dict[str, t.Tuple[bool, str]] = {}
    parts = PACKAGE.split(".")
    for index in range(1, len(parts) + 1):
        sources[".".join(parts[:index])] = (True, "")
    for name, module in sorted(sys.modules.items()):
        if name.startswith(PACKAGE + ".") and name != PACKAGE + "._module":
            source = module.__loader__.get_source(name)  # type: ignore[union-attr]
            if source is None:
                raise CriuError("Cannot read the source of %s to run it on the target." % name)
            sources[name] = (hasattr(module, "__path__"), source)
    return zlib.compress(json.dumps(sources).encode("utf-8"), 6)


def ssh_words(stderr: str) -> str:
    """What ssh and the agent said, without ssh's notice that it added a host key (an operator's
    StrictHostKeyChecking=no prints one per session) and the carriage returns ssh ends its lines with."""
    lines = [line.rstrip("\r") for line in stderr.splitlines()]
    return "\n".join(line for line in lines if not KNOWN_HOSTS_NOTICE.match(line)).strip()


class Agent:
    """This collection's code running on the target for one request, spoken to over one ssh session.

    By default the session's stdin/stdout are pipes carrying wire frames. With ``socket_io`` they are one end of
    a socket pair whose other end (``sock``) the caller keeps: a post-copy page relay hands that end to criu.
    """

    def __init__(self, target: SshTarget, code: bytes, request: t.Mapping[str, t.Any], socket_io: bool = False) -> None:
        self.target = target
        self.sock: t.Optional[socket.socket] = None
        self._stderr = tempfile.TemporaryFile(prefix="nucleus-criu-ssh-")
        argv = target.argv([target.python, "-c", BOOTSTRAP])
        if socket_io:
            self.sock, theirs = socket.socketpair()
            with theirs:
                self.proc = subprocess.Popen(argv, stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=self._stderr,
                                             close_fds=True, start_new_session=True)
            self.channel = wire.Channel(self.sock.fileno(), self.sock.fileno())
        else:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                         close_fds=True, start_new_session=True)
            stdout, stdin = t.cast(t.IO[bytes], self.proc.stdout), t.cast(t.IO[bytes], self.proc.stdin)  # (PIPE: not None)
            self.channel = wire.Channel(stdout.fileno(), stdin.fileno())
        try:
            self.channel.write_raw(b"%d\n" % len(code) + code)
            self.channel.send(**request)
        except wire.LinkError as exc:
            raise self.failure("could not start nucleus.criu's agent", exc) from None

    def stderr_text(self) -> str:
        self._stderr.seek(0)
        return ssh_words(self._stderr.read()[-2000:].decode("utf-8", "replace"))

    def failure(self, what: str, cause: t.Optional[BaseException] = None) -> CriuError:
        """Why the session failed: ssh's own words (unreachable, auth) or the agent's traceback."""
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        detail = self.stderr_text() or (str(cause) if cause else "no output")
        return CriuError("%s on %s: %s (ssh exit code %s)." % (what, self.target.label, detail, self.proc.returncode),
                         target=self.target.label)

    def answer(self, timeout: t.Optional[float]) -> t.Dict[str, t.Any]:
        """The agent's next message; an error it reports, or a lost session, raises CriuError."""
        try:
            message = self.channel.message(timeout)
        except wire.LinkError as exc:
            raise self.failure("the session with nucleus.criu's agent broke (%s)" % exc, exc) from exc
        if message.get("error"):
            raise CriuError("%s (on %s)" % (message["error"], self.target.label), target=self.target.label, **message.get("details", {}))
        return message

    def close(self, kill: bool = False) -> None:
        if self.sock is not None:
            self.sock.close()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
        if kill and self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


def ask(target: SshTarget, code: bytes, answer_within: float, **request: t.Any) -> t.Dict[str, t.Any]:
    """Run one request on the target and return its answer (raises CriuError when the target cannot be asked)."""
    agent = Agent(target, code, request)
    try:
        return agent.answer(answer_within)
    finally:
        agent.close(kill=True)
