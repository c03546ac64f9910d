"""The engine lab's sockets: enter a network namespace, probe TCP/UDP, serve echoes.

A thread enters a namespace (setns(2)), makes its socket there and comes back: the socket
stays in that namespace, so a probe "from a container" leaves from the container's own
network stack, exactly as a client inside it would.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

PAYLOAD = b"castle-probe\n"
CLONE_NEWNET = 0x40000000


@cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc().setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(path: str) -> Iterator[None]:
    """Run the block in the network namespace at path (this thread only), then come back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


@dataclass(frozen=True)
class Probe:
    """One connection attempt: from the namespace at src to dst:port over proto."""

    src: str  # a network namespace path: Engine.host_ns, Engine.outside_ns, Engine.netns(c)
    dst: str  # an IPv4 or IPv6 address
    port: int
    proto: str = "tcp"  # "tcp" or "udp"
    bind: str = ""  # a source address to bind (e.g. one of OUTSIDE_EXTRA); "" lets the kernel pick


def probe(p: Probe, timeout: float = 1.0) -> bool:
    """True when the probe got its payload echoed back (see EchoServers) within timeout."""
    kind = socket.SOCK_STREAM if p.proto == "tcp" else socket.SOCK_DGRAM
    with in_netns(p.src):
        sock = socket.socket(_family(p.dst), kind)
    with sock:
        sock.settimeout(timeout)
        try:
            if p.bind:
                sock.bind((p.bind, 0))
            sock.connect((p.dst, p.port))
            sock.sendall(PAYLOAD)
            got = b""
            deadline = time.monotonic() + timeout
            while len(got) < len(PAYLOAD) and time.monotonic() < deadline:
                chunk = sock.recv(len(PAYLOAD) - len(got))
                if not chunk:
                    break
                got += chunk
            return got == PAYLOAD
        except OSError:  # refused, reset, timed out, unreachable: all "no"
            return False


def probe_all(probes: Iterable[Probe], timeout: float = 1.0, workers: int = 64,
              ) -> dict[Probe, bool]:
    """Run probes in parallel; each answer says whether that probe got through."""
    todo = list(dict.fromkeys(probes))
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo)))) as pool:
        answers = list(pool.map(lambda p: probe(p, timeout), todo))
    return dict(zip(todo, answers, strict=True))


class EchoServers:
    """TCP and UDP echo servers inside network namespaces, served by one thread.

    Each TCP connection gets its first bytes echoed back and is closed; each UDP datagram is
    sent back to its sender. A UDP socket on 0.0.0.0 answers from the namespace's primary
    address: where a namespace has several, listen on each. Use as a context manager, or
    call close().
    """

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._keys: set[tuple[int, int, str, str]] = set()
        self._stop = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def listen(self, netns: str, port: int, proto: str = "tcp", addr: str = "0.0.0.0") -> None:
        """Serve port/proto on addr inside the namespace at netns (again: a no-op)."""
        key = (os.stat(netns).st_ino, port, proto, addr)
        with self._lock:
            if key in self._keys:
                return
            self._keys.add(key)
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        with in_netns(netns):
            sock = socket.socket(_family(addr), kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if _family(addr) == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((addr, port))
        if proto == "tcp":
            sock.listen(128)
        sock.setblocking(False)
        with self._lock:
            self._socks.append(sock)
            self._sel.register(sock, selectors.EVENT_READ, proto)
        self._wake_w.send(b"x")

    def _loop(self) -> None:
        while not self._stop:
            for key, _ in self._sel.select(timeout=0.5):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    if key.data == "wake":
                        sock.recv(64)
                    elif key.data == "tcp":
                        conn, _ = sock.accept()
                        conn.setblocking(False)
                        self._sel.register(conn, selectors.EVENT_READ, "conn")
                    elif key.data == "udp":
                        data, peer = sock.recvfrom(2048)
                        sock.sendto(data, peer)
                    else:
                        data = sock.recv(2048)
                        with contextlib.suppress(OSError):
                            sock.send(data)
                        self._sel.unregister(sock)
                        sock.close()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    with contextlib.suppress(KeyError, ValueError):
                        self._sel.unregister(sock)
                    sock.close()

    def close(self) -> None:
        """Stop serving and close every socket."""
        self._stop = True
        self._wake_w.send(b"x")
        self._thread.join(timeout=5)
        for key in list(self._sel.get_map().values()):
            fileobj = key.fileobj
            assert isinstance(fileobj, socket.socket)
            fileobj.close()
        self._sel.close()
        self._wake_w.close()

    def __enter__(self) -> EchoServers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
