"""Network-namespace plumbing: setns(2), sysctls, housekeeping, and a paced TCP/UDP prober."""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import re
import resource
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
from typing import TypeVar

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
PAYLOAD = b"!"
OURS = re.compile(r"^cst(\d+)-\d+-")  # lab namespaces: cst<pid>-<lab number>-<role>
SEQ = itertools.count()  # lab numbers within this process

_libc = ctypes.CDLL(None, use_errno=True)
_T = TypeVar("_T")


def run_cmd(argv: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its text output, never raising on failure."""
    return subprocess.run(argv, input=input, capture_output=True, text=True, check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_leftovers() -> list[str]:
    """Delete lab namespaces whose creating process is dead; return their names."""
    try:
        names = os.listdir(NETNS_DIR)
    except OSError:
        return []
    dead = [n for n in names if (m := OURS.match(n)) and not _alive(int(m.group(1)))]
    if dead:
        run_cmd(["ip", "-force", "-b", "-"], "".join(f"netns del {n}\n" for n in dead))
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
    run_cmd(["ip", "netns", "del", name])
    return None


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class _Switcher:
    """Moves the calling thread between named network namespaces and back home."""

    def __init__(self) -> None:
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._fds: dict[str, int] = {}
        self._here: str | None = None

    def enter(self, name: str) -> None:
        if name == self._here:
            return
        fd = self._fds.get(name)
        if fd is None:
            fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
            self._fds[name] = fd
        _setns(fd)
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


def run_in_thread(fn: Callable[[], _T]) -> _T:
    """Run fn in a fresh thread (whose namespace moves never touch the caller) and return its result."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: B036 - handed to the caller unchanged
            box["error"] = exc

    thread = threading.Thread(target=target, name="castle-netns", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def write_sysctls(settings: Mapping[str, Mapping[str, str]]) -> None:
    """Write /proc/sys values (keys like 'net/ipv4/ip_forward') inside each named namespace."""

    def work() -> None:
        sw = _Switcher()
        try:
            for netns, values in settings.items():
                sw.enter(netns)
                for key, value in values.items():
                    with open(f"/proc/sys/{key}", "w", encoding="ascii") as fh:
                        fh.write(value)
        finally:
            sw.close()

    run_in_thread(work)


def path_exists_in(netns: str, path: str) -> bool:
    """Whether a path (e.g. under /proc/sys/net) exists as seen from inside a namespace."""

    def work() -> bool:
        sw = _Switcher()
        try:
            sw.enter(netns)
            return os.path.exists(path)
        finally:
            sw.close()

    return run_in_thread(work)


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


class _Client:
    __slots__ = ("index", "sock", "proto", "deadline", "resend", "connected")

    def __init__(self, index: int, sock: socket.socket, proto: str, deadline: float) -> None:
        self.index = index
        self.sock = sock
        self.proto = proto
        self.deadline = deadline
        self.resend = 0.0
        self.connected = False


def _fd_budget(servers: int) -> int:
    """How many clients may be in flight: each can hold one client and one accepted socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(16, (soft - 128 - servers) // 2)


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
            sock = socket.socket(socket.AF_INET, kind)
            self.servers.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((spec.addr, spec.port))
            except OSError as exc:
                raise OSError(exc.errno, f"cannot listen on {spec}: {exc.strerror}") from exc
            if spec.proto == "tcp":
                sock.listen(4096)
            sock.setblocking(False)
            self.sel.register(sock, selectors.EVENT_READ, "listen" if spec.proto == "tcp" else "udp")

    def _loop(self) -> None:
        order = deque(sorted(range(len(self.connects)), key=lambda i: self.connects[i].netns))
        expiry: deque[_Client] = deque()
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
                    if client.proto == "udp":
                        resends.append(client)
            now = time.monotonic()
            while expiry and (expiry[0].index not in self.live or expiry[0].deadline <= now):
                client = expiry.popleft()
                if client.index in self.live:
                    self._finish(client, False)
            while resends and (resends[0].index not in self.live or resends[0].resend <= now):
                client = resends.popleft()
                if client.index in self.live:
                    # A lone datagram may be lost; one more try at half-time costs nothing.
                    try:
                        client.sock.send(PAYLOAD)
                    except OSError:
                        pass
            if order and len(self.live) < limit:
                wait = 0.002
            elif expiry:
                wait = min(0.05, max(0.0, expiry[0].deadline - now))
            else:
                wait = 0.0
            for key, mask in self.sel.select(wait):
                self._event(key, mask)
            self._report()

    def _start(self, index: int) -> _Client | None:
        spec = self.connects[index]
        self.sw.enter(spec.netns)
        kind = socket.SOCK_STREAM if spec.proto == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(socket.AF_INET, kind)
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
        client = _Client(index, sock, spec.proto, now + self.timeout)
        client.resend = now + self.timeout / 2
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
    return run_in_thread(engine.run)
