"""Test hosts that are machines: each its own minimal Debian root with systemd as PID 1, its own hostname, machine id,
disk (a directory that outlives a crash), network namespace with an address on a bridge of our own, sshd, and CRIU
installed into it by this collection's ``nucleus.criu.criu`` role over ssh.

A machine is entered with ``unshare --mount --pid --fork --uts --ipc --net``, moved into cgroups of its own (then a
cgroup namespace rooted there, so its systemd manages its own subtree, not this machine's), ``pivot_root`` into its
root (criu needs a proper mount tree: under a chroot ``criu check`` fails), then ``exec env -i container=NAME
/lib/systemd/systemd --system``. Killing that PID 1 ends every process of the machine at once (a crash); its disk
stays, and ``boot()`` starts it again from it.

What the harness does is test infrastructure only: the root from Debian's packages (mmdebstrap), an ssh key, the
network, the units masked that would write this machine's global kernel state (the machines share its kernel), the
two settings their systemd writes itself (fs.file-max, fs.nr_open) made read-only inside, and,
while the CRIU image is built, an apt proxy on the bridge (the machines have no route out: the proxy fetches only
from the Debian mirrors the machine's own apt sources name). The role does the install, exactly as on a user's host.

Caches (``$XDG_CACHE_HOME/nucleus-machines``, by default ``~/.cache/nucleus-machines``):
``SUITE-base-HASH.tar`` (mmdebstrap, keyed by the package list) and ``SUITE-criu-HASH.tar`` (the base after the
criu role ran in it, keyed by the package list, roles/criu, playbooks/criu.yml and the masks). Delete them to
rebuild.

Each pytest worker has a slot of its own (from its test-host port, see ``slot()``): bridge ``ncmSLOT``, veths
``ncmSLOT-2``..., subnet ``10.213.SLOT.0/24`` (the bridge .1, machines from .2), cgroups
``nucleus-machines/ncmSLOT-NAME`` in every hierarchy, disks on a tmpfs at ``/var/tmp/nucleus-machines/sSLOT``
(``NAME/root``; ``NAME/console.log`` has what the machine's PID 1 printed). Leftovers of an earlier run are cleaned
by exactly those names, never others.

Debugging: ``python tests/integration/machines.py up`` boots machine-a and machine-b in slot 90 (ssh root@10.213.90.2
with ``-i ~/.cache/nucleus-machines/id_ed25519``), ``... shell a`` enters one, ``... down`` ends them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.server
import os
import shutil
import signal
import socketserver
import subprocess
import sys
import threading
import time
import typing as t
import urllib.error
import urllib.parse
import urllib.request
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nucleus-machines")
WORK = "/var/tmp/nucleus-machines"
CGROUP_DIR = "nucleus-machines"
SUBNET = "10.213.%d"
DISK_SIZE = os.environ.get("NUCLEUS_MACHINES_DISK_SIZE", "6g")  # one tmpfs per pair, for both disks
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# What each machine's root holds from Debian (mmdebstrap --variant=minbase): a minimal server.
PACKAGES = ("systemd", "systemd-sysv", "dbus", "openssh-server", "iproute2", "python3", "procps")

# Units that would change what this machine's kernel holds for everyone (the machines share it), or reach outside:
# masked in every root. sysctl.d and binfmt_misc are global; modules are loaded into this kernel; pstore entries and
# the random pool are this machine's; fstrim and e2scrub act on its filesystems; sleep states on the whole machine;
# time sync sets its clock; apt's timers would try the network; no console to log in on.
MASKED = (
    "systemd-sysctl.service", "systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount", "proc-sys-fs-binfmt_misc.mount",
    "systemd-modules-load.service", "kmod-static-nodes.service", "systemd-udevd.service", "systemd-udev-trigger.service",
    "systemd-udev-settle.service", "systemd-hwdb-update.service", "systemd-pstore.service", "systemd-random-seed.service",
    "systemd-timesyncd.service", "systemd-timedated.service", "systemd-time-wait-sync.service", "systemd-journald-audit.socket",
    "fstrim.timer", "e2scrub_all.timer", "e2scrub_reap.service", "apt-daily.timer", "apt-daily-upgrade.timer",
    "sleep.target", "suspend.target", "hibernate.target", "hybrid-sleep.target", "suspend-then-hibernate.target",
    "systemd-suspend.service", "systemd-hibernate.service", "systemd-hybrid-sleep.service", "systemd-suspend-then-hibernate.service",
    "console-getty.service", "getty@tty1.service", "sys-kernel-debug.mount", "sys-kernel-tracing.mount", "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount",
)

# Run inside the new namespaces (bash of this machine, before pivot_root): wait for the harness to have moved us into
# our cgroups and given us a network, build the machine's mount tree, pivot into it and become its systemd.
INNER = r"""
set -euo pipefail
root=$1; name=$2
read -r go
[ "$go" = go ]
mount --make-rprivate /
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
# systemd as PID 1 raises fs.file-max and fs.nr_open to their maximum at every boot, for this machine's whole kernel
# (the units that would write other global settings are masked): read-only inside, as container managers make them.
for setting in fs/file-max fs/nr_open; do
  mount --bind "$root/proc/sys/$setting" "$root/proc/sys/$setting"
  mount -o remount,bind,ro "$root/proc/sys/$setting"
done
mount -t sysfs sysfs "$root/sys"
mount -t tmpfs -o mode=0755,nosuid tmpfs "$root/dev"
for node in null zero full random urandom tty; do
  touch "$root/dev/$node"; mount --bind "/dev/$node" "$root/dev/$node"
done
touch "$root/dev/console"; mount --bind /dev/null "$root/dev/console"
mkdir -m 0755 "$root/dev/pts" "$root/dev/shm" "$root/dev/mqueue"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
mount -t mqueue mqueue "$root/dev/mqueue"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"; ln -s /proc/self/fd/1 "$root/dev/stdout"; ln -s /proc/self/fd/2 "$root/dev/stderr"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
hostname "$name"
cd "$root"
mkdir -p .oldroot
pivot_root . .oldroot
umount -l /.oldroot
rmdir /.oldroot
exec /usr/bin/unshare --cgroup /usr/bin/env -i container=nucleus-machine "container_uuid=$(cat /etc/machine-id)" /lib/systemd/systemd --system
"""


def log(message: str) -> None:
    sys.stderr.write("machines: %s\n" % message)
    sys.stderr.flush()


def this_suite() -> str:
    """This machine's Debian suite (bookworm, trixie): the machines' default."""
    with open("/etc/os-release") as handle:
        for line in handle:
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return "bookworm"


def slot() -> int:
    """This pytest process's slot, from its test-host port (NUCLEUS_TEST_PORT, 2222 by default, plus 100 per xdist
    worker; tests/integration/conftest.py hosts_port): 2222 -> 0, 2322 -> 1, 2922 -> 7. Sessions whose test hosts do
    not collide get machines that do not either. NUCLEUS_MACHINES_SLOT overrides it."""
    if os.environ.get("NUCLEUS_MACHINES_SLOT"):
        return int(os.environ["NUCLEUS_MACHINES_SLOT"])
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    port = int(os.environ.get("NUCLEUS_TEST_PORT", "2222")) + 100 * int(worker[2:])
    return ((port - 2200) // 100) % 250


def sh(*argv: str, check: bool = True, timeout: float = 120, **kwargs: t.Any) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if check and proc.returncode != 0:
        raise RuntimeError("%s: rc %d: %s%s" % (" ".join(argv), proc.returncode, proc.stdout, proc.stderr))
    return proc


def cgroup_hierarchies() -> t.List[str]:
    """Every cgroup hierarchy mounted under /sys/fs/cgroup on this machine (v1 controllers, name=systemd, cgroup2)."""
    found = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype in ("cgroup", "cgroup2") and fields[4].startswith("/sys/fs/cgroup"):
                found.append(fields[4])
    return found


def key_file() -> str:
    """The harness's ssh key (made once, kept in the cache): root's authorized key in every machine."""
    key = os.path.join(CACHE, "id_ed25519")
    if not os.path.exists(key):
        os.makedirs(CACHE, exist_ok=True)
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "nucleus-machines", "-f", key)
    return key


@contextlib.contextmanager
def flock(path: str, blocking: bool = True) -> t.Iterator[None]:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            raise RuntimeError("%s is held by another live run (same slot): set NUCLEUS_MACHINES_SLOT or NUCLEUS_TEST_PORT" % path) from None
        yield
    finally:
        os.close(fd)


def digest(*parts: str) -> str:
    """A short hash of strings and of the files under the paths among them (relative to the repo)."""
    hasher = hashlib.sha256()
    for part in parts:
        full = os.path.join(REPO, part)
        if os.path.isdir(full):
            for current, dirs, files in os.walk(full):
                dirs.sort()
                for name in sorted(files):
                    path = os.path.join(current, name)
                    hasher.update(os.path.relpath(path, REPO).encode() + b"\0")
                    with open(path, "rb") as handle:
                        hasher.update(handle.read())
        elif os.path.isfile(full):
            with open(full, "rb") as handle:
                hasher.update(part.encode() + b"\0" + handle.read())
        else:
            hasher.update(part.encode() + b"\0")
    return hasher.hexdigest()[:12]


def base_tar(suite: str) -> str:
    """The minimal Debian root of PACKAGES (mmdebstrap, with this machine's network), made once."""
    tar = os.path.join(CACHE, "%s-base-%s.tar" % (suite, digest(suite, *PACKAGES)))
    with flock(os.path.join(CACHE, "%s-base.lock" % suite)):
        if not os.path.exists(tar):
            log("making a minimal %s root (mmdebstrap)" % suite)
            begin = time.monotonic()
            part = tar + ".part"
            sh("mmdebstrap", "--quiet", "--variant=minbase", "--format=tar", "--include=" + ",".join(PACKAGES), suite, part, timeout=900)
            os.rename(part, tar)
            log("%s made in %.0f s" % (os.path.basename(tar), time.monotonic() - begin))
    return tar


def criu_tar(suite: str, net: Network, disks: str) -> str:
    """The base root after this collection's criu role installed CRIU into it over ssh, made once per role version
    (by a machine on ``net``, which is up, with its disk under ``disks``)."""
    tar = os.path.join(CACHE, "%s-criu-%s.tar" % (suite, digest(suite, *PACKAGES, *MASKED, "roles/criu", "playbooks/criu.yml")))
    with flock(os.path.join(CACHE, "%s-criu.lock" % suite)):
        if not os.path.exists(tar):
            build_criu_tar(suite, base_tar(suite), tar, net, disks)
    return tar


def build_criu_tar(suite: str, base: str, tar: str, net: Network, disks: str) -> None:
    """Boot a machine from ``base``, run playbooks/criu.yml against it over ssh (apt reaching Debian through a proxy
    on the bridge), stop it cleanly and keep its disk as ``tar``."""
    begin = time.monotonic()
    log("installing CRIU into a %s machine with the nucleus.criu.criu role (once: cached in %s)" % (suite, tar))
    machine = Machine("machine-build", net, 9, suite=suite, work=os.path.join(disks, "machine-build"), tar=base)
    proxy = AptProxy(net.gateway)
    try:
        machine.create()
        conf = os.path.join(machine.root, "etc/apt/apt.conf.d/99nucleus-machines-proxy")
        with open(conf, "w") as handle:
            handle.write('Acquire::http::Proxy "http://%s:%d";\n' % (net.gateway, proxy.port))
        proxy.allow(machine.apt_hosts())
        proxy.start()
        machine.boot()
        inventory = machine.write_inventory(os.path.join(machine.work, "inventory.ini"))
        out = os.path.join(CACHE, "%s-criu-role.log" % suite)
        with open(out, "w") as handle:
            proc = subprocess.run([PLAYBOOK, "-i", inventory, "playbooks/criu.yml"], cwd=REPO, stdout=handle,
                                  stderr=subprocess.STDOUT, timeout=900, check=False, env=dict(os.environ, ANSIBLE_NOCOLOR="1"))
        if proc.returncode != 0:
            with open(out) as handle:
                raise RuntimeError("the criu role failed on the build machine (log %s):\n%s" % (out, handle.read()[-6000:]))
        machine.stop()
        os.unlink(conf)
        # What is this build machine's own and no machine made from the image should share.
        shutil.rmtree(os.path.join(machine.root, "var/log/journal"), ignore_errors=True)
        part = tar + ".part"
        sh("tar", "-C", machine.root, "--numeric-owner", "-cf", part, ".", timeout=600)
        os.rename(part, tar)
    finally:
        proxy.stop()
        machine.crash()
        shutil.rmtree(machine.work, ignore_errors=True)
    log("%s made in %.0f s" % (os.path.basename(tar), time.monotonic() - begin))


class AptProxy:
    """An HTTP proxy for apt on the bridge address, forwarding GETs only to the hosts allowed (the Debian mirrors the
    build machine's apt sources name). Lives only while the CRIU image is built."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.hosts: t.Set[str] = set()
        self.server: t.Optional[socketserver.ThreadingTCPServer] = None
        self.port = 3142

    def allow(self, hosts: t.Iterable[str]) -> None:
        self.hosts.update(hosts)

    def start(self) -> None:
        allowed = self.hosts

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:  # noqa: N802  (http.server's name)
                url = urllib.parse.urlsplit(self.path)
                if url.scheme != "http" or url.hostname not in allowed:
                    self.send_error(403, "not a Debian mirror of this machine: %s" % url.hostname)
                    return
                request = urllib.request.Request(self.path, headers={k: v for k, v in self.headers.items()
                                                                     if k.lower() in ("range", "if-modified-since", "user-agent")})
                try:
                    with urllib.request.urlopen(request, timeout=60) as upstream:  # noqa: S310
                        self.send_response(upstream.status)
                        for name, value in upstream.headers.items():
                            if name.lower() in ("content-type", "content-length", "last-modified", "content-range", "date"):
                                self.send_header(name, value)
                        self.end_headers()
                        shutil.copyfileobj(upstream, self.wfile)
                except urllib.error.HTTPError as exc:
                    self.send_error(exc.code, str(exc.reason))
                except (OSError, urllib.error.URLError) as exc:
                    self.send_error(502, str(exc))

            def log_message(self, format: str, *args: t.Any) -> None:  # pylint: disable=redefined-builtin
                pass

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer((self.address, self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class Network:
    """A bridge in this machine's network namespace (``PREFIX``, address SUBNET.1/24) and a veth per machine; no
    route out of the subnet, no NAT: the machines reach each other and the bridge address, nothing else."""

    def __init__(self, number: int, prefix: t.Optional[str] = None) -> None:
        self.number = number
        self.prefix = prefix or "ncm%d" % number
        self.bridge = self.prefix
        self.gateway = (SUBNET % number) + ".1"

    def address(self, host: int) -> str:
        return "%s.%d" % (SUBNET % self.number, host)

    def up(self) -> None:
        if not os.path.exists("/sys/class/net/%s" % self.bridge):
            sh("ip", "link", "add", self.bridge, "type", "bridge")
            sh("ip", "addr", "add", self.gateway + "/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")

    def attach(self, pid: int, host: int) -> None:
        """A veth from the bridge into the network namespace of ``pid``, as eth0 with SUBNET.HOST/24 there."""
        veth = "%s-%d" % (self.prefix, host)
        if os.path.exists("/sys/class/net/%s" % veth):
            sh("ip", "link", "del", veth)
        # A MAC address of its own that a reboot keeps, as a real NIC's: with a new one each boot, this machine's
        # neighbour entry for the address would point to the old one for up to a minute after a crash.
        mac = "02:6e:63:%02x:00:%02x" % (self.number, host)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "address", mac, "netns", str(pid))
        sh("ip", "link", "set", veth, "master", self.bridge, "up")
        sh("ip", "neigh", "flush", "dev", self.bridge, "to", self.address(host), check=False)
        inside = ["nsenter", "-t", str(pid), "-n", "ip"]
        sh(*inside, "link", "set", "lo", "up")
        sh(*inside, "addr", "add", self.address(host) + "/24", "dev", "eth0")
        sh(*inside, "link", "set", "eth0", "up")

    def cleanup(self) -> None:
        """Delete the bridge and every veth named with this network's prefix (and nothing else)."""
        for name in sorted(os.listdir("/sys/class/net"), reverse=True):
            if name == self.bridge or name.startswith(self.prefix + "-"):
                sh("ip", "link", "del", name, check=False)


class Machine:
    """One machine: its disk at ``work/root``, booted with systemd as PID 1 in namespaces of its own."""

    def __init__(self, name: str, net: Network, host: int, suite: t.Optional[str] = None, work: t.Optional[str] = None,
                 tar: t.Optional[str] = None) -> None:
        self.name = name
        self.net = net
        self.host = host
        self.suite = suite or os.environ.get("NUCLEUS_MACHINES_SUITE") or this_suite()
        self.work = work or os.path.join(WORK, "s%d" % net.number, name)
        self.root = os.path.join(self.work, "root")
        self.tar = tar
        self.address = net.address(host)
        self.cgroup = "%s/%s-%s" % (CGROUP_DIR, net.prefix, name)
        self.unshare: t.Optional[subprocess.Popen] = None
        self.pid1 = 0
        self.boot_seconds = 0.0
        self.key = key_file()

    # --- the disk -----------------------------------------------------------------------------------------------
    def create(self) -> None:
        """The machine's disk from the cached image (CRIU installed by the role), with its own identity."""
        tar = self.tar or criu_tar(self.suite, self.net, os.path.dirname(self.work))
        if os.path.exists(self.work):
            shutil.rmtree(self.work)
        os.makedirs(self.root)
        os.chmod(self.root, 0o755)
        sh("tar", "-C", self.root, "--numeric-owner", "-xf", tar, timeout=300)
        self.prepare()

    def prepare(self) -> None:
        """Test infrastructure only: identity (hostname, machine id, ssh host keys), root's authorized key, names of
        the peers, masked units, and no apt source to try (no route out)."""
        def write(path: str, content: str, mode: int = 0o644) -> None:
            full = os.path.join(self.root, path.lstrip("/"))
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "w") as handle:
                handle.write(content)
            os.chmod(full, mode)

        write("/etc/hostname", self.name + "\n")
        write("/etc/machine-id", uuid.uuid4().hex + "\n", 0o444)
        write("/etc/hosts", "127.0.0.1 localhost\n127.0.1.1 %s\n%s\n" % (
            self.name, "\n".join("%s machine-%s" % (self.net.address(n), chr(ord("a") + n - 2)) for n in range(2, 6))))
        # A host key of its own (one: an RSA key takes a second to make), the only one sshd offers.
        for key in ("rsa", "ecdsa", "ed25519"):
            path = os.path.join(self.root, "etc/ssh/ssh_host_%s_key" % key)
            for old in (path, path + ".pub"):
                if os.path.exists(old):
                    os.unlink(old)
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "root@" + self.name, "-f", os.path.join(self.root, "etc/ssh/ssh_host_ed25519_key"))
        write("/etc/ssh/sshd_config.d/nucleus-machines.conf", "HostKey /etc/ssh/ssh_host_ed25519_key\n")
        with open(self.key + ".pub") as handle:
            write("/root/.ssh/authorized_keys", handle.read(), 0o600)
        os.chmod(os.path.join(self.root, "root/.ssh"), 0o700)
        system = os.path.join(self.root, "etc/systemd/system")
        for unit in MASKED:
            link = os.path.join(system, unit)
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink("/dev/null", link)

    def apt_hosts(self) -> t.Set[str]:
        """The hosts of the machine's own apt sources and Debian's default mirror (what the criu role may fetch)."""
        hosts = {"deb.debian.org"}
        for path in [os.path.join(self.root, "etc/apt/sources.list")] + [
                os.path.join(self.root, "etc/apt/sources.list.d", n) for n in os.listdir(os.path.join(self.root, "etc/apt/sources.list.d"))]:
            if os.path.isfile(path):
                with open(path) as handle:
                    for word in handle.read().split():
                        if word.startswith("http://"):
                            hosts.add(urllib.parse.urlsplit(word).hostname or "")
        return hosts - {""}

    def path(self, path: str) -> str:
        """``path`` of the machine's disk, from this machine (the disk is a directory here, booted or not)."""
        return os.path.join(self.root, path.lstrip("/"))

    # --- life -----------------------------------------------------------------------------------------------------
    def boot(self, timeout: float = 90) -> None:
        """Start systemd as the machine's PID 1 from its disk and wait until it runs and sshd answers."""
        assert not self.running(), "%s is running" % self.name
        if not os.path.exists(self.root):
            self.create()
        begin = time.monotonic()
        inner = os.path.join(self.work, "inner.sh")
        with open(inner, "w") as handle:
            handle.write(INNER)
        console = open(os.path.join(self.work, "console.log"), "ab")  # pylint: disable=consider-using-with
        self.unshare = subprocess.Popen(
            ["unshare", "--mount", "--pid", "--fork", "--uts", "--ipc", "--net", "--propagation", "private",
             "bash", inner, self.root, self.name],
            stdin=subprocess.PIPE, stdout=console, stderr=console, start_new_session=True, env={"PATH": PATH})
        console.close()
        try:
            self.pid1 = wait_for(self._child, 10, "%s's init" % self.name)
            self._enter_cgroups(self.pid1)
            self.net.attach(self.pid1, self.host)
            assert self.unshare.stdin is not None
            self.unshare.stdin.write(b"go\n")
            self.unshare.stdin.close()
            state = ""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.unshare.poll() is not None:
                    raise RuntimeError("%s's PID 1 ended (rc %s) while booting: see %s/console.log" % (self.name, self.unshare.returncode, self.work))
                state = self.run("systemctl is-system-running", check=False, timeout=10).stdout.strip()
                if state in ("running", "degraded"):
                    break
                time.sleep(0.2)
            else:
                raise RuntimeError("%s did not finish booting in %d s (%s): %s" % (self.name, timeout, state, self.failed_units()))
            wait_for(lambda: self.ssh("true", check=False, timeout=10).returncode == 0, 30, "sshd on %s" % self.address)
        except BaseException:
            self.crash()
            raise
        self.boot_seconds = time.monotonic() - begin

    def _child(self) -> int:
        assert self.unshare is not None
        try:
            with open("/proc/%d/task/%d/children" % (self.unshare.pid, self.unshare.pid)) as handle:
                found = handle.read().split()
        except OSError:
            return 0
        return int(found[0]) if found else 0

    def cgroup_dirs(self) -> t.List[str]:
        return [os.path.join(h, self.cgroup) for h in cgroup_hierarchies()]

    def _enter_cgroups(self, pid: int) -> None:
        """Move the machine's init into cgroups of its own in every hierarchy; it then roots a cgroup namespace there."""
        for path in self.cgroup_dirs():
            remove_cgroup(path)
            os.makedirs(path, exist_ok=True)
            # A cpuset cgroup (v1) holds no process before it has CPUs and memory nodes: its parent's.
            for name in ("cpuset.cpus", "cpuset.mems"):
                inherit(path, name)
            with open(os.path.join(path, "cgroup.procs"), "w") as handle:
                handle.write(str(pid))

    def running(self) -> bool:
        return bool(self.pid1) and os.path.exists("/proc/%d" % self.pid1) and self.unshare is not None and self.unshare.poll() is None

    def processes(self) -> t.List[int]:
        """Every process of this machine (by its cgroups: whatever runs in them, seen from here)."""
        return cgroup_processes(self.cgroup_dirs())

    def crash(self) -> None:
        """SIGKILL the machine's PID 1: the kernel ends every process of its PID namespace at once. Its disk stays."""
        if self.pid1:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid1, signal.SIGKILL)
        if self.unshare is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.unshare.wait(timeout=30)
        # Processes moved into its cgroups from outside its PID namespace (nsenter) die too.
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not self.processes(), 30, "every process of %s to end" % self.name)
        self.pid1 = 0
        self.unshare = None
        for path in self.cgroup_dirs():
            remove_cgroup(path)

    def stop(self, timeout: float = 60) -> None:
        """A clean shutdown (``systemctl poweroff``: units stopped, disk synced), then whatever is left killed."""
        if self.running():
            self.run("systemctl poweroff --no-block", check=False)
            assert self.unshare is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.unshare.wait(timeout=timeout)
        self.crash()

    def reboot(self, clean: bool = False) -> None:
        """Crash (or, with ``clean``, shut down) and boot again from the same disk."""
        if clean:
            self.stop()
        else:
            self.crash()
        self.boot()

    # --- inside -----------------------------------------------------------------------------------------------------
    def run(self, command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """``sh -c command`` inside the machine, through its PID 1's namespaces (no ssh needed)."""
        assert self.pid1, "%s is not booted" % self.name
        return sh("nsenter", "-t", str(self.pid1), "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w",
                  "/usr/bin/env", "-i", "PATH=" + PATH, "LANG=C.UTF-8", "/bin/sh", "-c", command, check=check, timeout=timeout)

    @property
    def ssh_args(self) -> t.List[str]:
        """ssh's arguments up to the command: ``ssh_args + ['uname -n']``."""
        return ["ssh", "-i", self.key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5", "root@" + self.address]

    def ssh(self, command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return sh(*self.ssh_args, command, check=check, timeout=timeout)

    def inventory_line(self) -> str:
        return ("%s ansible_host=%s ansible_user=root ansible_ssh_private_key_file=%s ansible_python_interpreter=/usr/bin/python3 "
                "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'" % (self.name, self.address, self.key))

    def write_inventory(self, path: str) -> str:
        with open(path, "w") as handle:
            handle.write("[machines]\n%s\n" % self.inventory_line())
        return path

    def failed_units(self) -> str:
        if not self.running():
            return "(not running)"
        return self.run("systemctl list-units --failed --no-legend --plain; systemctl list-jobs --no-legend", check=False).stdout.strip()


class Machines:
    """This pytest worker's machines on a network of their own (slot()), cleaned before and after."""

    def __init__(self, names: t.Sequence[str] = ("machine-a", "machine-b"), number: t.Optional[int] = None) -> None:
        self.number = slot() if number is None else number
        self.net = Network(self.number)
        self.work = os.path.join(WORK, "s%d" % self.number)
        self.machines = [Machine(name, self.net, 2 + i, work=os.path.join(self.work, name)) for i, name in enumerate(names)]
        self._lock: t.Optional[contextlib.ExitStack] = None
        # This machine's kernel settings before any of these machines booted (test_machines.py compares).
        self.sysctls_at_start: t.Dict[str, str] = {}

    def __getitem__(self, index: int) -> Machine:
        return self.machines[index]

    @property
    def inventory(self) -> str:
        return os.path.join(self.work, "inventory.ini")

    def up(self) -> None:
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(flock(self.work + ".lock", blocking=False))
        try:
            self.cleanup()
            self.sysctls_at_start = global_sysctls()
            mount_disks(self.work)
            self.net.up()
            criu_tar(self.machines[0].suite, self.net, self.work)  # built once, before the machines need it
            with open(self.inventory, "w") as handle:
                handle.write("[machines]\n%s\n" % "\n".join(m.inventory_line() for m in self.machines))
            threads = [threading.Thread(target=self._boot, args=(m,)) for m in self.machines]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            failed = [m.name for m in self.machines if not m.running()]
            if failed:
                raise RuntimeError("machines did not boot: %s (see %s/*/console.log)" % (", ".join(failed), self.work))
        except BaseException:
            self.down()
            raise

    def _boot(self, machine: Machine) -> None:
        try:
            machine.create()
            machine.boot()
        except Exception as exc:  # pylint: disable=broad-except  # reported by up()
            log("%s: %s" % (machine.name, exc))

    def down(self) -> None:
        try:
            for machine in self.machines:
                with contextlib.suppress(Exception):
                    machine.crash()
            self.cleanup()
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def cleanup(self) -> None:
        """Whatever an earlier run of this slot left: processes in its cgroups, the cgroups, its links, its disks."""
        prefix = "%s-" % self.net.prefix
        dirs = []
        for hierarchy in cgroup_hierarchies():
            parent = os.path.join(hierarchy, CGROUP_DIR)
            if os.path.isdir(parent):
                dirs += [os.path.join(parent, n) for n in os.listdir(parent) if n.startswith(prefix)]
        for _attempt in range(50):
            pids = cgroup_processes(dirs)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        for path in dirs:
            remove_cgroup(path)
        for hierarchy in cgroup_hierarchies():
            with contextlib.suppress(OSError):  # still holds another slot's machines
                os.rmdir(os.path.join(hierarchy, CGROUP_DIR))
        self.net.cleanup()
        unmount_disks(self.work)


def mount_disks(path: str) -> None:
    """A tmpfs for the machines' disks under ``path``: unpacking an image of some 700 MB takes 6 to 11 s on this VM's
    disk, under a second in memory. A disk outlives its machine's crashes and reboots, not the tmpfs."""
    os.makedirs(path, exist_ok=True)
    if not os.path.ismount(path):
        sh("mount", "-t", "tmpfs", "-o", "mode=0700,size=%s" % DISK_SIZE, "nucleus-machines", path)


def unmount_disks(path: str) -> None:
    """Unmount what mount_disks() mounted (once no machine uses it) and remove the mount point."""
    if os.path.ismount(path):
        if sh("umount", path, check=False).returncode != 0:
            sh("umount", "--lazy", path)
    if os.path.isdir(path):
        shutil.rmtree(path)


# /proc/sys entries that change on their own (counters, the last pid, random values) or that tests set on purpose
# (post-copy's fs.pipe-max-size); per network namespace ones (net.*) are each machine's own.
VOLATILE_SYSCTLS = ("/proc/sys/net/", "/proc/sys/kernel/random/", "/proc/sys/kernel/ns_last_pid", "/proc/sys/fs/dentry-state",
                    "/proc/sys/fs/file-nr", "/proc/sys/fs/inode-nr", "/proc/sys/fs/inode-state", "/proc/sys/fs/pipe-max-size",
                    "/proc/sys/kernel/tainted", "/proc/sys/fs/quota/", "/proc/sys/vm/stat_refresh")


def global_sysctls() -> t.Dict[str, str]:
    """Every readable setting of this machine's kernel that the machines share with it."""
    found = {}
    for current, _dirs, files in os.walk("/proc/sys"):
        for name in files:
            path = os.path.join(current, name)
            if path.startswith(VOLATILE_SYSCTLS):
                continue
            try:
                with open(path) as handle:
                    found[path] = handle.read()
            except OSError:
                pass
    return found


def cgroup_processes(dirs: t.Iterable[str]) -> t.List[int]:
    found: t.Set[int] = set()
    for top in dirs:
        for current, _dirs, _files in os.walk(top):
            with contextlib.suppress(OSError):
                with open(os.path.join(current, "cgroup.procs")) as handle:
                    found.update(int(p) for p in handle.read().split())
    return sorted(found)


def remove_cgroup(path: str) -> None:
    """rmdir a cgroup and its children, deepest first (they must hold no process)."""
    if not os.path.isdir(path):
        return
    for current, _dirs, _files in sorted(os.walk(path), key=lambda entry: -entry[0].count("/")):
        with contextlib.suppress(OSError):
            os.rmdir(current)


def inherit(path: str, name: str) -> None:
    """Copy a cgroup's setting from its parents (the nearest non-empty one) when it has that file."""
    if not os.path.exists(os.path.join(path, name)):
        return
    parent = path
    value = ""
    while not value and parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
        with contextlib.suppress(OSError):
            with open(os.path.join(parent, name)) as handle:
                value = handle.read().strip()
    for current in _chain(os.path.dirname(path), parent) + [path]:
        with open(os.path.join(current, name), "w") as handle:
            handle.write(value)


def _chain(top: str, stop: str) -> t.List[str]:
    """The directories from just below ``stop`` down to ``top``."""
    chain = []
    while top != stop and top.startswith(stop):
        chain.append(top)
        top = os.path.dirname(top)
    return chain[::-1]


def wait_for(predicate: t.Callable[[], t.Any], timeout: float, what: str) -> t.Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError("timed out after %d s waiting for %s" % (timeout, what))
        time.sleep(0.1)


def main(argv: t.Sequence[str]) -> int:
    """Debugging: ``up`` boots a pair in slot 90 and leaves it running, ``shell NAME`` enters one, ``down`` ends it."""
    machines = Machines(number=int(os.environ.get("NUCLEUS_MACHINES_SLOT", "90")))
    command = argv[0] if argv else "help"
    if command == "up":
        machines.up()
        for machine in machines.machines:
            ssh = " ".join(machine.ssh_args)
            print("%s: pid1 %d, %s, booted in %.1f s: %s" % (machine.name, machine.pid1, machine.address, machine.boot_seconds, ssh))
        print("inventory: %s" % machines.inventory)
        # up() holds the slot's lock for as long as this process lives: leave it without cleaning up.
        os._exit(0)
    if command == "down":
        with flock(machines.work + ".lock", blocking=False):  # never the machines of a run still going
            machines.cleanup()
        return 0
    if command == "shell":
        name = "machine-%s" % argv[1] if len(argv) > 1 else "machine-a"
        dirs = [os.path.join(h, CGROUP_DIR, "%s-%s" % (machines.net.prefix, name)) for h in cgroup_hierarchies()]
        init = next((p for p in cgroup_processes(dirs) if _nspid(p) == 1), 0)
        if not init:
            print("%s is not running" % name, file=sys.stderr)
            return 1
        os.execvp("nsenter", ["nsenter", "-t", str(init), "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w",
                              "/usr/bin/env", "-i", "PATH=" + PATH, "TERM=" + os.environ.get("TERM", "dumb"), "/bin/bash", "-l"])
    print(main.__doc__)
    return 2


def _nspid(pid: int) -> int:
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
