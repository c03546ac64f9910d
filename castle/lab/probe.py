"""The lab's machinery: namespace plumbing and a paced TCP/UDP prober."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import re
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, TypeVar

from castle.lab.topology import LabError

if TYPE_CHECKING:
    pass

HOST_EXT = IPv4Address("203.0.113.1")  # the host's address towards the internet
HOST_EXT6 = "2001:db8::1"  # the host's IPv6 address, where docker-proxy listens on [::]
OUTSIDE6 = "2001:db8::2"
OUTSIDE = IPv4Address("203.0.113.2")  # the internet's address, in the outside namespace
EXT_IF = "eth0"  # the host's uplink, as on a typical Docker host
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
PAYLOAD = b"!"
OURS = re.compile(r"^cst(\d+)-\d+-")  # lab namespaces: cst<pid>-<lab number>-<role>
SEQ = itertools.count()  # lab numbers within this process

_T = TypeVar("_T")


def run_cmd(argv: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its text output, never raising on failure."""
    return subprocess.run(argv, input=input, capture_output=True, text=True, check=False)


def nsexec(netns: str, argv: list[str], input: str | None = None
           ) -> subprocess.CompletedProcess[str]:
    """Run a command inside a named network namespace (nsenter: the mounts stay the machine's)."""
    return run_cmd(["nsenter", f"--net={NETNS_DIR}/{netns}", "--", *argv], input)


def ip_batches(jobs: Sequence[tuple[str | None, list[str]]]) -> None:
    """Feed each list of `ip` commands to one `ip [-n NETNS] -b -`, a few processes at a time."""
    errors = []
    for start in range(0, len(jobs), 16):
        chunk = jobs[start:start + 16]
        procs = [subprocess.Popen(["ip", *(["-n", ns] if ns else []), "-b", "-"], text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE) for ns, _ in chunk]
        for (ns, lines), proc in zip(chunk, procs, strict=True):
            _, err = proc.communicate("\n".join(lines) + "\n")
            if proc.returncode:
                errors.append(f"ip -b in {ns or 'the root namespace'}: {err.strip()}")
    if errors:
        raise LabError("; ".join(errors))


def delete_namespaces(names: Iterable[str]) -> list[str]:
    """Delete named namespaces (missing ones are fine); return those still present after."""
    names = [n for n in names if os.path.exists(os.path.join(NETNS_DIR, n))]
    if names:
        run_cmd(["ip", "-force", "-b", "-"], "".join(f"netns del {n}\n" for n in names))
    return [n for n in names if os.path.exists(os.path.join(NETNS_DIR, n))]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def cleanup_leftovers() -> list[str]:
    """Delete lab namespaces whose creating process is dead; return their names."""
    try:
        names = os.listdir(NETNS_DIR)
    except OSError:
        return []
    dead = [n for n in names if (m := OURS.match(n)) and not _alive(int(m.group(1)))]
    delete_namespaces(dead)
    return dead


@cache
def netns_available() -> str | None:
    """None when labs can run here, else the reason they cannot (for pytest skips)."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables-restore", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    name = f"cst{os.getpid()}-{next(SEQ)}-check"
    made = run_cmd(["ip", "netns", "add", name])
    if made.returncode:
        return f"'ip netns add' failed: {made.stderr.strip()}"
    delete_namespaces([name])
    return None


@cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)  # loaded on first use: importable anywhere


def _setns(fd: int) -> None:
    if _libc().setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class _Switcher:
    """Moves the calling thread between named network namespaces and back home."""

    def __init__(self) -> None:
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._fds: dict[str, int] = {}
        self._here: str | None = None

    def enter(self, name: str) -> None:
        if name != self._here:
            if name not in self._fds:
                path = os.path.join(NETNS_DIR, name)
                self._fds[name] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            _setns(self._fds[name])
            self._here = name

    def close(self) -> None:
        try:
            if self._here is not None:
                _setns(self._home)
                self._here = None
        finally:
            for fd in (self._home, *self._fds.values()):
                os.close(fd)
            self._fds.clear()


def in_netns(netns: str | None, fn: Callable[[], _T]) -> _T:
    """Run fn in a fresh thread inside netns (None: no move); the caller's thread never moves."""
    box: dict[str, object] = {}

    def target() -> None:
        sw = _Switcher()
        try:
            if netns is not None:
                sw.enter(netns)
            box["value"] = fn()
        except BaseException as exc:  # noqa: B036 - handed to the caller unchanged
            box["error"] = exc
        finally:
            sw.close()

    thread = threading.Thread(target=target, name="castle-netns", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def write_sysctls(values: Mapping[str, str]) -> None:
    """Write /proc/sys/KEY (e.g. 'net/ipv4/ip_forward') for the calling thread's namespace."""
    for key, value in values.items():
        with open(f"/proc/sys/{key}", "w", encoding="ascii") as fh:
            fh.write(value)


@dataclass(frozen=True)
class Listen:
    """A server for one probe round: echo on (namespace, proto, address, port)."""

    netns: str
    proto: str
    addr: str
    port: int


@dataclass(frozen=True)
class Connect:
    """One client attempt from a namespace (optionally from a bound source address) to dst:port."""

    netns: str
    proto: str
    dst: str
    port: int
    src: str | None = None


@dataclass(slots=True, eq=False)
class _Client:
    index: int
    sock: socket.socket
    proto: str
    deadline: float
    resend: float  # when a UDP client sends its datagram once more
    connected: bool = False  # TCP: the handshake completed
    graced: bool = False


def _fd_budget(servers: int) -> int:
    """How many clients may be in flight: each can hold one client and one accepted socket."""
    import resource  # POSIX only, like everything else here

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < cap:
        try:  # dropped probes all wait out the timeout together: let there be room for them
            resource.setrlimit(resource.RLIMIT_NOFILE, (cap, hard))
            soft = cap
        except (ValueError, OSError):
            pass
    return max(16, (min(soft, cap) - 128 - servers) // 2)


class _Engine:
    """One selector loop driving every server and client of a probe round."""

    def __init__(
        self,
        listens: Sequence[Listen],
        connects: Sequence[Connect],
        timeout: float,
        burst: int,
        progress: Callable[[int, int], None] | None,
        stop: threading.Event | None,
    ) -> None:
        self.listens = listens
        self.connects = connects
        self.timeout = timeout
        self.burst = max(1, burst)
        self.progress = progress
        self.stop = stop
        self.sel = selectors.DefaultSelector()
        self.results = [False] * len(connects)
        self.live: dict[int, _Client] = {}
        self.servers: list[socket.socket] = []
        self.conns: set[socket.socket] = set()
        self.done = 0
        self.last_report = 0.0

    def run(self) -> list[bool]:
        self.sw = _Switcher()  # in the prober's own thread: its home is that thread's namespace
        try:
            self._serve()
            self._loop()
        finally:
            for client in list(self.live.values()):
                client.sock.close()
            for sock in (*self.servers, *self.conns):
                sock.close()
            self.sel.close()
            self.sw.close()
        if self.progress is not None:
            self.progress(self.done, len(self.connects))
        return self.results

    def _serve(self) -> None:
        for spec in sorted(set(self.listens), key=lambda s: (s.netns, s.proto, s.addr, s.port)):
            self.sw.enter(spec.netns)
            kind = socket.SOCK_STREAM if spec.proto == "tcp" else socket.SOCK_DGRAM
            sock = socket.socket(_family(spec.addr), kind)
            self.servers.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((spec.addr, spec.port))
            except OSError as exc:
                raise LabError(f"cannot listen on {spec}: {exc.strerror}") from exc
            if spec.proto == "tcp":
                sock.listen(4096)
            sock.setblocking(False)
            role = "listen" if spec.proto == "tcp" else "udp"
            self.sel.register(sock, selectors.EVENT_READ, role)

    def _loop(self) -> None:
        order = deque(sorted(range(len(self.connects)), key=lambda i: self.connects[i].netns))
        expiry: deque[_Client] = deque()  # by deadline: clients start (and are graced) in order
        resends: deque[_Client] = deque()
        limit = _fd_budget(len(self.servers))
        while order or self.live:
            if self.stop is not None and self.stop.is_set():
                return
            started = 0
            # Pace the connects: a burst, then a short look at the sockets, then the next burst.
            while order and started < self.burst and len(self.live) < limit:
                client = self._start(order.popleft())
                started += 1
                if client is not None:
                    expiry.append(client)
                    resends.extend([client] if client.proto == "udp" else [])
            if order and len(self.live) < limit:
                wait = 0.002
            else:
                wait = min(0.05, max(0.0, expiry[0].deadline - time.monotonic())) if expiry else 0
            ready = self.sel.select(wait)
            # Whatever had arrived by now is handled before anyone is declared timed out.
            cutoff = time.monotonic()
            for key, mask in ready:
                self._event(key, mask)
            while expiry and (expiry[0].index not in self.live or expiry[0].deadline <= cutoff):
                client = expiry.popleft()
                if client.index in self.live and client.connected and not client.graced:
                    # The handshake made it in time; the echo only waits on this loop.
                    client.graced, client.deadline = True, cutoff + self.timeout
                    expiry.append(client)
                elif client.index in self.live:
                    self._finish(client, False)
            while resends and (resends[0].index not in self.live or resends[0].resend <= cutoff):
                client = resends.popleft()
                if client.index in self.live:
                    # A lone datagram may be lost; one more try at half-time costs nothing.
                    with contextlib.suppress(OSError):
                        client.sock.send(PAYLOAD)
            self._report()

    def _start(self, index: int) -> _Client | None:
        spec = self.connects[index]
        self.sw.enter(spec.netns)
        kind = socket.SOCK_STREAM if spec.proto == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(_family(spec.dst), kind)
        sock.setblocking(False)
        try:
            if spec.src is not None:
                sock.bind((spec.src, 0))
            rc = sock.connect_ex((spec.dst, spec.port))
            if spec.proto == "tcp":
                if rc not in (0, errno.EINPROGRESS):
                    raise OSError(rc, os.strerror(rc))
                events = selectors.EVENT_WRITE
            else:
                if rc:
                    raise OSError(rc, os.strerror(rc))
                sock.send(PAYLOAD)
                events = selectors.EVENT_READ
        except OSError:
            sock.close()
            self._record(index, False)
            return None
        now = time.monotonic()
        client = _Client(index, sock, spec.proto, now + self.timeout, now + self.timeout / 2)
        self.sel.register(sock, events, client)
        self.live[index] = client
        return client

    def _event(self, key: selectors.SelectorKey, mask: int) -> None:
        data = key.data
        if isinstance(data, _Client):
            self._client_event(data, mask)
            return
        sock: socket.socket = key.fileobj  # type: ignore[assignment]
        if data == "listen":
            while True:
                try:
                    conn, _ = sock.accept()
                except OSError:
                    return
                conn.setblocking(False)
                self.conns.add(conn)
                self.sel.register(conn, selectors.EVENT_READ, "conn")
        elif data == "udp":
            while True:
                try:
                    got, peer = sock.recvfrom(64)
                    sock.sendto(got, peer)
                except OSError:
                    return
        else:  # an accepted connection: echo what came, then close
            try:
                got = sock.recv(64)
                if got:
                    sock.send(got)
            except BlockingIOError:
                return
            except OSError:
                pass
            self.sel.unregister(sock)
            self.conns.discard(sock)
            sock.close()

    def _client_event(self, client: _Client, mask: int) -> None:
        sock = client.sock
        if client.proto == "tcp" and not client.connected:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._finish(client, False)
                return
            try:
                sock.send(PAYLOAD)
            except OSError:
                self._finish(client, False)
                return
            client.connected = True
            self.sel.modify(sock, selectors.EVENT_READ, client)
            return
        try:
            got = sock.recv(64)
        except BlockingIOError:
            return
        except OSError:
            self._finish(client, False)
            return
        self._finish(client, got.startswith(PAYLOAD))

    def _finish(self, client: _Client, ok: bool) -> None:
        self.sel.unregister(client.sock)
        client.sock.close()
        del self.live[client.index]
        self._record(client.index, ok)

    def _record(self, index: int, ok: bool) -> None:
        self.results[index] = ok
        self.done += 1

    def _report(self) -> None:
        now = time.monotonic()
        if self.progress is not None and now - self.last_report >= 0.05:
            self.last_report = now
            self.progress(self.done, len(self.connects))


def run_probes(
    listens: Iterable[Listen],
    connects: Sequence[Connect],
    timeout: float,
    *,
    burst: int = 100,
    progress: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
) -> list[bool]:
    """Start the echo servers, run every connect in parallel (paced), and say which completed."""
    engine = _Engine(list(listens), connects, timeout, burst, progress, stop)
    return in_netns(None, engine.run)
