"""A minimal NFLOG reader: the kernel's nfnetlink_log messages of one group, over raw netlink.

Independent of castle: it binds a NETLINK_NETFILTER socket to an NFLOG group (the socket
belongs to the network namespace it is made in) and returns, per logged packet, the prefix
and the IPv4 source and destination the kernel attached. Message layout from the kernel's
include/uapi/linux/netfilter/nfnetlink_log.h.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass
from ipaddress import IPv4Address

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULA_CFG_MODE = 1, 2
NFULNL_CFG_CMD_BIND, NFULNL_CFG_CMD_PF_BIND, NFULNL_CFG_CMD_PF_UNBIND = 1, 3, 4
NFULA_PAYLOAD, NFULA_PREFIX = 9, 10
NFULNL_COPY_PACKET = 2
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2


@dataclass(frozen=True)
class Logged:
    """One packet the kernel logged to the group."""

    prefix: str
    src: IPv4Address | None
    dst: IPv4Address | None


def _attr(kind: int, data: bytes) -> bytes:
    body = struct.pack("=HH", 4 + len(data), kind) + data
    return body + b"\0" * (-len(body) % 4)


def _config(sock: socket.socket, seq: int, family: int, group: int, attrs: bytes,
            strict: bool = True) -> None:
    kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
    payload = struct.pack("=BBH", family, 0, socket.htons(group)) + attrs
    sock.send(struct.pack("=IHHII", 16 + len(payload), kind, NLM_F_REQUEST | NLM_F_ACK,
                          seq, 0) + payload)
    reply = sock.recv(65536)
    _, mtype = struct.unpack_from("=IH", reply)
    if mtype == NLMSG_ERROR:
        (err,) = struct.unpack_from("=i", reply, 16)
        if err and strict:
            raise OSError(-err, f"nflog config failed: error {err}")


def cmd(command: int) -> bytes:
    """An NFULA_CFG_CMD attribute."""
    return _attr(NFULA_CFG_CMD, bytes([command]))


def open_group(group: int) -> socket.socket:
    """A socket bound to NFLOG `group` in the calling thread's network namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.bind((0, 0))
    sock.settimeout(2.0)
    # per-family binding is a no-op on current kernels, needed on old ones
    _config(sock, 1, socket.AF_INET, 0, cmd(NFULNL_CFG_CMD_PF_UNBIND), strict=False)
    _config(sock, 2, socket.AF_INET, 0, cmd(NFULNL_CFG_CMD_PF_BIND), strict=False)
    _config(sock, 3, 0, group, cmd(NFULNL_CFG_CMD_BIND))
    _config(sock, 4, 0, group, _attr(NFULA_CFG_MODE, struct.pack(">IBB", 0xFFFF,
                                                                 NFULNL_COPY_PACKET, 0)))
    return sock


def _parse(msg: bytes) -> Logged:
    prefix, src, dst = "", None, None
    off = 4  # after struct nfgenmsg
    while off + 4 <= len(msg):
        length, kind = struct.unpack_from("=HH", msg, off)
        if length < 4:
            break
        data = msg[off + 4:off + length]
        kind &= 0x7FFF
        if kind == NFULA_PREFIX:
            prefix = data.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif kind == NFULA_PAYLOAD and len(data) >= 20 and data[0] >> 4 == 4:
            src, dst = IPv4Address(data[12:16]), IPv4Address(data[16:20])
        off += (length + 3) & ~3
    return Logged(prefix, src, dst)


def read(sock: socket.socket, quiet: float = 1.5) -> list[Logged]:
    """Every message that arrives until nothing has come for `quiet` seconds."""
    out: list[Logged] = []
    sock.settimeout(quiet)
    end = time.monotonic() + 30
    while time.monotonic() < end:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        off = 0
        while off + 16 <= len(data):
            length, mtype = struct.unpack_from("=IH", data, off)
            if length < 16:
                break
            if mtype == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
                out.append(_parse(data[off + 16:off + length]))
            off += (length + 3) & ~3
    return out
