"""An emulated Docker host in throwaway network namespaces, built from a compose file."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from ipaddress import IPv4Address
from types import FrameType, TracebackType
from typing import Any

from castle.lab.dockerd import (
    bridge_names,
    docker_iptables,
    docker_proxy,
    gateway_net,
    mac,
    published_targets,
)
from castle.lab.probe import (
    EXT_IF,
    HOST_EXT,
    HOST_EXT6,
    OUTSIDE,
    OUTSIDE6,
    SEQ,
    Connect,
    Listen,
    cleanup_leftovers,
    delete_namespaces,
    in_netns,
    ip_batches,
    netns_available,
    nsexec,
    run_cmd,
    run_probes,
    write_sysctls,
)
from castle.lab.topology import (
    LabContainer,
    LabError,
    LabNet,
    Published,
    Topology,
)

_Handler = Callable[[int, FrameType | None], Any] | int | None


@dataclass(frozen=True)
class Probe:
    """One connection attempt: src (container, 'outside', 'outside:IP') to dst on proto/port."""

    src: str
    dst: str  # a container, "published", "outside", "outside:IP", "host" or "host:<network>"
    proto: str
    port: int


def _shifted(report: Callable[[int, int], None], offset: int, total: int, done: int, _: int
             ) -> None:
    report(offset + done, total)


class Lab:
    """A running emulated Docker host: built on enter, removed on exit (also on SIGTERM/SIGINT)."""

    def __init__(
        self,
        topo: Topology,
        *,
        bridge_nf_call: bool = True,
        conntrack_docker: bool = True,
        userland_proxy: bool = True,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.topo = topo
        # dockerd's default: docker-proxy on [::] for every port published on all addresses
        self.proxy_bin = docker_proxy() if userland_proxy else None
        self._proxies: list[subprocess.Popen[bytes]] = []
        self.bridge_nf_call = bridge_nf_call
        self.progress = progress
        self.prefix = f"cst{os.getpid()}-{next(SEQ)}-"
        self.host_ns, self.outside_ns = self.prefix + "host", self.prefix + "out"
        self.container_ns = {c.name: f"{self.prefix}c{i}" for i, c in enumerate(topo.containers)}
        self.bridges = bridge_names(topo.nets)
        self.docker_rules = docker_iptables(topo, self.bridges, conntrack=conntrack_docker)
        self._nets = {n.name: n for n in topo.nets}
        self._containers = {c.name: c for c in topo.containers}
        self._made: list[str] = []
        self._sources: set[IPv4Address] = {OUTSIDE}
        self._stop = threading.Event()
        self._handlers: dict[int, _Handler] = {}
        self._running = False

    @property
    def namespaces(self) -> list[str]:
        """Every namespace of this lab: host, outside, then one per container."""
        return [self.host_ns, self.outside_ns, *self.container_ns.values()]

    def __enter__(self) -> Lab:
        if self._made:
            raise LabError("a Lab can be entered only once")
        reason = netns_available()
        if reason is not None:
            raise LabError(reason)
        cleanup_leftovers()
        self._install_handlers()
        try:
            self._build()
        except BaseException:
            self._teardown()
            raise
        self._running = True
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        left = self._teardown()
        if left and kind is None:
            raise LabError(f"namespaces left behind: {' '.join(left)}")

    def host_exec(
        self, argv: list[str], input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the host namespace (iptables-restore, nft -f, iptables-save...)."""
        return self.exec_in("host", argv, input)

    def exec_in(
        self, node: str, argv: list[str], input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the namespace of 'host', 'outside' or a container (no raise on exit)."""
        if not self._running:
            raise LabError("the lab is not running")
        ns = {**self.container_ns, "host": self.host_ns, "outside": self.outside_ns}.get(node)
        if ns is None:
            raise LabError(f"no such lab node: {node!r}")
        return nsexec(ns, argv, input)

    def probe(self, probes: Sequence[Probe], timeout: float = 1.0) -> dict[Probe, bool]:
        """Try every probe in parallel: True where a connection and one echoed byte got through."""
        if not self._running:
            raise LabError("the lab is not running")
        unique = list(dict.fromkeys(probes))
        # "host" and "published" both dial 203.0.113.1: never let a host listener answer
        # for a port that was meant to be published, so such host probes go in a second round.
        published = {(p.proto, p.port) for p in unique if p.dst == "published"}
        later = [p for p in unique if p.dst == "host" and (p.proto, p.port) in published]
        results = dict.fromkeys(unique, False)
        offset, report = 0, self.progress
        for batch in ([p for p in unique if p not in set(later)], later):
            listens: set[Listen] = set()
            planned = [(p, self._plan(p, listens)) for p in batch]
            connects = [(p, c) for p, c in planned if c is not None]
            self._add_sources({IPv4Address(c.src) for _, c in connects if c.src is not None}
                              | {IPv4Address(c.dst) for p, c in connects
                                 if p.dst.startswith("outside:")})
            shifted = report and partial(_shifted, report, offset, len(unique))
            try:
                done = run_probes(listens, [c for _, c in connects], timeout, stop=self._stop,
                                  progress=shifted)
            except OSError as exc:
                raise LabError(f"probing failed: {exc}") from exc
            results.update(zip((p for p, _ in connects), done, strict=True))
            offset += len(batch)
            if report is not None:
                report(offset, len(unique))
        return results

    def _plan(self, p: Probe, listens: set[Listen]) -> Connect | None:
        if p.proto not in ("tcp", "udp") or not 0 < p.port < 65536:
            raise LabError(f"bad probe {p}: proto must be tcp or udp, port 1-65535")
        src = self._containers.get(p.src)
        bind = None
        if src is not None:
            ns = self.container_ns[p.src]
        elif p.src == "outside" or p.src.startswith("outside:"):
            ns = self.outside_ns
            bind = str(self._check_source(p.src[8:])) if p.src != "outside" else None
        else:
            raise LabError(f"unknown probe source {p.src!r}")
        dst = self._containers.get(p.dst)
        if dst is not None:
            if not dst.addrs:
                return None  # network_mode none: nothing can reach it
            shared = [n for n in (src.addrs if src else {}) if n in dst.addrs]
            addr = dst.addrs[shared[0]] if shared else next(iter(dst.addrs.values()))
            listens.add(Listen(self.container_ns[p.dst], p.proto, "0.0.0.0", p.port))
        elif p.dst in ("published", "published6"):
            if src is not None:
                raise LabError(f"bad probe {p}: published ports are probed from outside")
            if p.dst == "published6" and bind is not None:
                raise LabError(f"bad probe {p}: IPv6 probes come from the outside address")
            addr = HOST_EXT if p.dst == "published" else HOST_EXT6  # type: ignore[assignment]
            for pub, _, _ in published_targets(self.topo):
                if pub.host_port == p.port and pub.proto == p.proto:
                    ns_c = self.container_ns[pub.container]
                    listens.add(Listen(ns_c, p.proto, "0.0.0.0", pub.container_port))
        elif p.dst in ("outside", "host"):
            out = p.dst == "outside"
            addr, node = (OUTSIDE, self.outside_ns) if out else (HOST_EXT, self.host_ns)
            listens.add(Listen(node, p.proto, str(addr), p.port))
        elif p.dst.startswith("outside:"):  # another address of the outside namespace
            addr = self._check_source(p.dst[8:])
            listens.add(Listen(self.outside_ns, p.proto, str(addr), p.port))
        elif p.dst.startswith("host:") and p.dst[5:] in self._nets:
            addr = self._nets[p.dst[5:]].gw
            listens.add(Listen(self.host_ns, p.proto, str(addr), p.port))
        else:
            raise LabError(f"unknown probe destination {p.dst!r}")
        return Connect(ns, p.proto, str(addr), p.port, bind)

    def _check_source(self, text: str) -> IPv4Address:
        try:
            addr = IPv4Address(text)
        except ValueError as exc:
            raise LabError(f"bad outside source address {text!r}") from exc
        if addr == OUTSIDE:
            return addr
        if (addr == HOST_EXT or addr.is_loopback or addr.is_multicast or addr.is_unspecified
                or addr.is_reserved or any(addr in n.subnet for n in self.topo.nets)):
            raise LabError(f"outside source {addr} would clash with the lab's own addresses")
        return addr

    def _add_sources(self, wanted: set[IPv4Address]) -> None:
        new = sorted(wanted - self._sources)
        if new:
            route = f"via {OUTSIDE} dev {EXT_IF}"
            ip_batches([(self.outside_ns, [f"addr add {a}/32 dev {EXT_IF}" for a in new]),
                        (self.host_ns, [f"route add {a}/32 {route}" for a in new])])
            self._sources.update(new)

    def _build(self) -> None:
        self._made = self.namespaces
        ip_batches([(None, [f"netns add {n}" for n in self._made])])
        base = {"net/ipv4/conf/all/rp_filter": "0", "net/ipv4/conf/default/rp_filter": "0"}
        if os.path.isdir("/proc/sys/net/ipv6"):  # no IPv6 chatter in the shared neighbour table
            base |= {f"net/ipv6/conf/{c}/disable_ipv6": "1" for c in ("all", "default")}
        host = base | {"net/ipv4/ip_forward": "1"}
        nf = "/proc/sys/net/bridge/bridge-nf-call-iptables"
        if not in_netns(self.host_ns, lambda: os.path.exists(nf)):
            run_cmd(["modprobe", "br_netfilter"])
        if in_netns(self.host_ns, lambda: os.path.exists(nf)):
            host["net/bridge/bridge-nf-call-iptables"] = "1" if self.bridge_nf_call else "0"
        elif self.bridge_nf_call:
            raise LabError("br_netfilter is not available: bridged traffic would bypass iptables")
        for ns in self._made:  # before any interface exists, so that every one inherits them
            in_netns(ns, partial(write_sysctls, host if ns == self.host_ns else base))
        ip_batches([(self.host_ns, self._host_lines())])
        jobs = [(self.outside_ns, [
            "link set lo up", f"link set {EXT_IF} up", f"addr add {OUTSIDE}/24 dev {EXT_IF}",
            f"neigh replace {HOST_EXT} lladdr {mac(HOST_EXT)} dev {EXT_IF} nud permanent",
            f"route add default via {HOST_EXT}"])]
        jobs += [(self.container_ns[c.name], self._container_lines(c))
                 for c in self.topo.containers]
        ip_batches(jobs)
        rules = nsexec(self.host_ns, ["iptables-restore"], self.docker_rules)
        if rules.returncode:
            raise LabError(f"loading dockerd's rules failed: {rules.stderr.strip()}")
        self._ipv6_uplink()
        self._start_proxies()

    def _ipv6_uplink(self) -> None:
        """IPv6 on the host's uplink only, as on a dual-stack Docker host."""
        on = {f"net/ipv6/conf/{EXT_IF}/disable_ipv6": "0"}
        if not os.path.isdir("/proc/sys/net/ipv6"):
            return
        for ns in (self.host_ns, self.outside_ns):
            in_netns(ns, partial(write_sysctls, on))
        ip_batches([(self.host_ns, [f"addr add {HOST_EXT6}/64 dev {EXT_IF} nodad",
                                    f"neigh replace {OUTSIDE6} lladdr {mac(OUTSIDE)} dev "
                                    f"{EXT_IF} nud permanent"]),
                    (self.outside_ns, [f"addr add {OUTSIDE6}/64 dev {EXT_IF} nodad",
                                       f"neigh replace {HOST_EXT6} lladdr {mac(HOST_EXT)} dev "
                                       f"{EXT_IF} nud permanent"])])

    def _start_proxies(self) -> None:
        """Run Docker's own docker-proxy on [::] for each port published on every address."""
        if self.proxy_bin is None:
            return
        for pub, _, addr in published_targets(self.topo):
            if not pub.ipv6:
                continue
            self._proxies.append(subprocess.Popen(
                # docker-proxy reports readiness on fd 3, as dockerd gives it a pipe there
                ["nsenter", f"--net=/run/netns/{self.host_ns}", "--", "sh", "-c",
                 'exec "$0" "$@" 3>/dev/null', self.proxy_bin,
                 "-proto", pub.proto, "-host-ip", "::", "-host-port", str(pub.host_port),
                 "-container-ip", str(addr), "-container-port", str(pub.container_port)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 5
        want = {pub.host_port for pub, _, _ in published_targets(self.topo) if pub.ipv6}
        while want and time.monotonic() < deadline:  # until every proxy listens
            ss = nsexec(self.host_ns, ["ss", "-Hlntu6"]).stdout
            if all(f"]:{port} " in ss for port in want):
                return
            time.sleep(0.05)

    def _host_lines(self) -> list[str]:
        lines = ["link set lo up"]
        for n in self.topo.nets:
            b = self.bridges[n.name]
            lines += [f"link add {b} address {mac(n.gw)} type bridge", f"link set {b} up",
                      f"addr add {n.gw}/{n.subnet.prefixlen} dev {b}"]
        lines += [f"link add {EXT_IF} address {mac(HOST_EXT)} type veth peer name {EXT_IF}"
                  f" address {mac(OUTSIDE)} netns {self.outside_ns}",
                  f"link set {EXT_IF} up", f"addr add {HOST_EXT}/24 dev {EXT_IF}",
                  f"neigh replace {OUTSIDE} lladdr {mac(OUTSIDE)} dev {EXT_IF} nud permanent"]
        for i, c in enumerate(self.topo.containers):
            for k, (net, addr) in enumerate(c.addrs.items()):
                b, veth = self.bridges[net], f"veth{i}_{k}"
                lines += [f"link add {veth} type veth peer name eth{k} address {mac(addr)}"
                          f" netns {self.container_ns[c.name]}",
                          f"link set {veth} master {b} up",
                          f"neigh replace {addr} lladdr {mac(addr)} dev {b} nud permanent"]
        return lines

    def _container_lines(self, c: LabContainer) -> list[str]:
        lines = ["link set lo up"]
        for k, (net, addr) in enumerate(c.addrs.items()):
            n, dev = self._nets[net], f"eth{k}"
            lines += [f"link set {dev} up", f"addr add {addr}/{n.subnet.prefixlen} dev {dev}",
                      f"neigh replace {n.gw} lladdr {mac(n.gw)} dev {dev} nud permanent"]
            lines += [f"neigh replace {a} lladdr {mac(a)} dev {dev} nud permanent"
                      for o in self.topo.containers if o is not c and (a := o.addrs.get(net))]
        gw = gateway_net(self.topo, c.name)
        if gw is not None:  # like Docker: no default route on internal networks only
            lines.append(f"route add default via {self._nets[gw].gw}")
        return lines

    def _teardown(self) -> list[str]:
        self._running = False
        self._stop.set()
        for proc in self._proxies:
            proc.kill()
            proc.wait()
        self._proxies.clear()
        self._restore_handlers()
        return delete_namespaces(self._made)

    def _install_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers; exits still clean up
        for sig in (signal.SIGTERM, signal.SIGINT):
            prev = signal.getsignal(sig)
            if prev != signal.SIG_IGN:
                self._handlers[sig] = prev
                signal.signal(sig, self._on_signal)

    def _restore_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, prev in self._handlers.items():
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        self._handlers.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        prev = self._handlers.get(signum)
        self._teardown()
        if callable(prev):
            prev(signum, frame)  # e.g. KeyboardInterrupt for SIGINT, or an outer lab's handler
        else:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


__all__ = [
    "EXT_IF", "HOST_EXT", "HOST_EXT6", "OUTSIDE", "OUTSIDE6", "Lab", "LabContainer",
    "LabError", "LabNet", "Probe",
    "Published", "Topology", "bridge_names", "cleanup_leftovers", "docker_iptables",
    "docker_proxy", "gateway_net", "netns_available", "published_targets",
]
