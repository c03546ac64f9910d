"""Oracles for Kubernetes manifests: kubernetes-validate and network-config-analyzer (nca).

`nca --connectivity ... -o txt_no_fw_rules` prints one line per allowed (src, dst) pair:

    shop/app[Pod] => shop/db[Pod] : {protocols:TCP,dst_ports:5432}
    shop/web[Pod] => shop/app[Pod] : {protocols:TCP,dst_ports:80,443,7000-7005}
    shop/app[Pod] => kube-system/kube-dns[Pod] : {protocols:TCP, UDP,dst_ports:53}
    shop/web[Pod] => shop/db[Pod] : {protocols:TCP}                 (every TCP port)
    0.0.0.0-9.255.255.255 => shop/web[Pod] : {protocols:TCP,dst_ports:80,443}
    kube-system/kube-dns[Pod] => 0.0.0.0-255.255.255.255 : All connections

IP peers are atoms cut at every boundary any policy mentions (an ipBlock with `except`
shows up as several ranges, and one cidr can be split by another policy's cidr); one pair
may take several lines (one per protocol group); self-loops are never listed; a loose set
may print as `All but {...}`. `parse_nca` turns this into raw tuples, `normalize` into a
canonical `Connectivity` that `expected_connectivity` builds from a spec's connections too.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import REPO_ROOT, OracleError, OracleUnavailable, venv_script

Interval = tuple[int, int]
Ports = tuple[Interval, ...]
Raw = tuple[str, str, str, int | Interval]  # (src, dst, proto, port or (lo, hi))
Segments = tuple[tuple[int, int, tuple[str, ...]], ...]  # (port_lo, port_hi, ip ranges)
Labels = Mapping[str, str]

PORT_PROTOS = ("tcp", "udp", "sctp")
OTHER = "other"  # a protocol without ports (ICMP...): port 0
FULL: Interval = (1, 65535)
KUBE_DNS = "kube-system/kube-dns"
TIMEOUT = 120
_V6 = (1 << 32) + 1  # IPv6 addresses sort after IPv4 ones, never adjacent to them


class NcaError(OracleError):
    """nca rejected the policies (exit 7) or failed, or printed a line we cannot read."""


# -- kubernetes-validate ---------------------------------------------------------------


def validate_skip_reason() -> str | None:
    """Why kubernetes-validate cannot run here, or None when it can."""
    if venv_script("kubernetes-validate") is None:
        return "kubernetes-validate not installed (pip install kubernetes-validate)"
    return None


def validate(paths: Sequence[Path | str], version: str = "1.30") -> tuple[bool, str]:
    """`kubernetes-validate --strict --quiet -k VERSION FILE...`: (valid, its output)."""
    exe = venv_script("kubernetes-validate")
    if exe is None:
        raise OracleUnavailable(validate_skip_reason() or "kubernetes-validate missing")
    cmd = [str(exe), "--strict", "--quiet", "-k", version, *map(str, paths)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


# -- network-config-analyzer: running it -------------------------------------------------


def nca_binary() -> Path | None:
    """nca from $CASTLE_NCA, else `<repo>/.venv-nca/bin/nca`."""
    path = Path(os.environ.get("CASTLE_NCA") or REPO_ROOT / ".venv-nca" / "bin" / "nca")
    return path if path.is_file() and os.access(path, os.X_OK) else None


def nca_skip_reason() -> str | None:
    """Why nca cannot run here, or None when it can."""
    if nca_binary() is None:
        return "network-config-analyzer not found: set CASTLE_NCA or run scripts/test.sh"
    return None


def stack_cluster(
    namespace: str, services: Iterable[str], label_key: str = "app.kubernetes.io/name"
) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """Pods ("ns/name" -> labels) and namespaces of a stack, plus kube-system/kube-dns."""
    pods = {f"{namespace}/{s}": {label_key: s} for s in services}
    pods[KUBE_DNS] = {"k8s-app": "kube-dns"}
    return pods, {namespace: {}, "kube-system": {}}


def write_cluster(
    directory: Path, pods: Mapping[str, Labels], namespaces: Mapping[str, Labels] | Iterable[str]
) -> tuple[Path, Path]:
    """Write PodList and NamespaceList manifests into directory; return their paths."""
    ns_labels = dict(namespaces) if isinstance(namespaces, Mapping) else {n: {} for n in namespaces}
    for key in pods:
        ns_labels.setdefault(key.split("/")[0], {})
    ns_items = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            # The API server sets this label on every namespace; selectors rely on it.
            "metadata": {"name": ns, "labels": {**labels, "kubernetes.io/metadata.name": ns}},
        }
        for ns, labels in sorted(ns_labels.items())
    ]
    pod_items = []
    for key, labels in sorted(pods.items()):
        ns, name = key.split("/")
        pod_items.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "labels": dict(labels)},
                "spec": {"containers": [{"name": name, "image": "oracle"}]},
            }
        )
    pods_path, ns_path = directory / "pods.yaml", directory / "namespaces.yaml"
    pods_path.write_text(
        yaml.safe_dump({"apiVersion": "v1", "kind": "PodList", "items": pod_items})
    )
    ns_path.write_text(
        yaml.safe_dump({"apiVersion": "v1", "kind": "NamespaceList", "items": ns_items})
    )
    return pods_path, ns_path


Query = tuple[Sequence[Path | str], Mapping[str, Labels], Mapping[str, Labels] | Iterable[str]]

# Runs inside nca's own venv: one process for many queries (a process start costs ~0.5 s,
# a query ~0.05 s). nca keeps no state between nca_main calls (checked: same output).
_DRIVER = """
import json, sys, traceback
from nca.nca_cli import nca_main
codes = []
for argv in json.load(open(sys.argv[1])):
    try:
        codes.append(nca_main(argv))
    except SystemExit as exc:
        codes.append(exc.code if isinstance(exc.code, int) else 2)
    except Exception:
        traceback.print_exc()
        codes.append(-1)
json.dump(codes, open(sys.argv[2], "w"))
"""


def _nca_python(exe: Path) -> str:
    """The interpreter of nca's console script (its shebang), else the one beside it."""
    first = exe.read_text(errors="replace").splitlines()[0] if exe.stat().st_size else ""
    if first.startswith("#!") and Path(first[2:].strip()).is_file():
        return first[2:].strip()
    return str(exe.parent / "python")


def run_nca_many(queries: Sequence[Query]) -> list[str]:
    """nca's txt_no_fw_rules report for each (policy_files, pods, namespaces), in one process."""
    exe = nca_binary()
    if exe is None:
        raise OracleUnavailable(nca_skip_reason() or "nca missing")
    with tempfile.TemporaryDirectory(prefix="castle-nca-") as tmp:
        work = Path(tmp)
        jobs, outs = [], []
        for n, (policy_files, pods, namespaces) in enumerate(queries):
            job = work / f"q{n}"
            (job / "policies").mkdir(parents=True)
            pods_path, ns_path = write_cluster(job, pods, namespaces)
            for i, src in enumerate(map(Path, policy_files)):
                shutil.copyfile(src, job / "policies" / f"{i:03d}-{src.name}")
            outs.append(job / "out.txt")
            jobs.append(
                ["--connectivity", str(job / "policies"), "--pod_list", str(pods_path)]
                + ["--ns_list", str(ns_path), "-o", "txt_no_fw_rules", "-f", str(outs[-1])]
            )
        (work / "jobs.json").write_text(json.dumps(jobs))
        (work / "driver.py").write_text(_DRIVER)
        cmd = [_nca_python(exe), str(work / "driver.py"), str(work / "jobs.json")]
        cmd.append(str(work / "codes.json"))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=work)
        log = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0 or not (work / "codes.json").exists():
            raise NcaError(f"nca driver failed (exit {proc.returncode}): {log}")
        codes = json.loads((work / "codes.json").read_text())
        reports = []
        for n, (code, out) in enumerate(zip(codes, outs, strict=True)):
            if code == 7:
                raise NcaError(f"nca: invalid policies in query {n} (exit 7): {log}")
            if code != 0 or not out.exists():
                raise NcaError(f"nca failed on query {n} (exit {code}): {log}")
            reports.append(out.read_text())
        return reports


def nca_resources(
    policy_files: Sequence[Path | str],
    pod_files: Sequence[Path | str],
    ns_files: Sequence[Path | str],
) -> set[Raw]:
    """What the policies allow among workloads read from manifests (Deployments, Pods, their
    lists) and Namespaces nca reads itself, as raw tuples; a Deployment `ns/name[Deployment]`
    becomes "ns/name" like a pod."""
    exe = nca_binary()
    if exe is None:
        raise OracleUnavailable(nca_skip_reason() or "nca missing")
    with tempfile.TemporaryDirectory(prefix="castle-nca-") as tmp:
        work = Path(tmp)
        (work / "policies").mkdir()
        for i, src in enumerate(map(Path, policy_files)):
            shutil.copyfile(src, work / "policies" / f"{i:03d}-{src.name}")
        argv = ["--connectivity", str(work / "policies")]
        argv += [arg for f in pod_files for arg in ("--pod_list", str(f))]
        argv += [arg for f in ns_files for arg in ("--ns_list", str(f))]
        argv += ["-o", "txt_no_fw_rules", "-f", str(work / "out.txt")]
        (work / "jobs.json").write_text(json.dumps([argv]))
        (work / "driver.py").write_text(_DRIVER)
        cmd = [_nca_python(exe), str(work / "driver.py"), str(work / "jobs.json"),
               str(work / "codes.json")]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=work)
        log = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0 or not (work / "codes.json").exists():
            raise NcaError(f"nca driver failed (exit {proc.returncode}): {log}")
        code = json.loads((work / "codes.json").read_text())[0]
        if code != 0 or not (work / "out.txt").exists():
            raise NcaError(f"nca failed (exit {code}): {log}")
        return parse_nca((work / "out.txt").read_text())


def run_nca(
    policy_files: Sequence[Path | str],
    pods: Mapping[str, Labels],
    namespaces: Mapping[str, Labels] | Iterable[str],
) -> str:
    """The txt_no_fw_rules connectivity report of nca; raises NcaError on invalid policies."""
    return run_nca_many([(policy_files, pods, namespaces)])[0]


# -- network-config-analyzer: reading its output -----------------------------------------


def _merge(intervals: Iterable[Interval]) -> Ports:
    out: list[Interval] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def _minus(whole: Interval, holes: Iterable[Interval]) -> Ports:
    out, start = [], whole[0]
    for lo, hi in _merge(holes):
        if lo > start:
            out.append((start, min(lo - 1, whole[1])))
        start = max(start, hi + 1)
    if start <= whole[1]:
        out.append((start, whole[1]))
    return tuple(out)


ConnSet = dict[str, Ports]  # proto -> ports; OTHER -> ((0, 0),) when present


def _all() -> ConnSet:
    return {**{p: (FULL,) for p in PORT_PROTOS}, OTHER: ((0, 0),)}


def _complement(conns: ConnSet) -> ConnSet:
    out = {p: _minus(FULL, conns.get(p, ())) for p in PORT_PROTOS}
    out = {p: v for p, v in out.items() if v}
    if OTHER not in conns:
        out[OTHER] = ((0, 0),)
    return out


def _ports(text: str) -> Ports:
    items = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        items.append((int(lo), int(hi or lo)))
    return _merge(items)


def _protocols(text: str) -> set[str]:
    text = text.strip()
    if text == "*":
        return {*PORT_PROTOS, OTHER}
    if text.startswith("all but "):
        excluded = _protocols(text.removeprefix("all but "))
        return {*PORT_PROTOS, OTHER} - (excluded - {OTHER})
    names = {n.strip().lower() for n in text.split(",")}
    return {n if n in PORT_PROTOS else OTHER for n in names}


def _cube(body: str) -> ConnSet:
    fields = dict(part.split(":", 1) for part in re.split(r",(?=[a-z_]+:)", body))
    unknown = set(fields) - {"protocols", "dst_ports"}
    if unknown:
        raise NcaError(f"nca: unexpected connection dimension(s) {sorted(unknown)} in {body!r}")
    protos = _protocols(fields["protocols"]) if "protocols" in fields else set(PORT_PROTOS)
    ports = _ports(fields["dst_ports"]) if "dst_ports" in fields else (FULL,)
    return {p: ((0, 0),) if p == OTHER else ports for p in protos}


def parse_conn(text: str) -> ConnSet:
    """One nca connection text ("All connections", "{protocols:..}", "All but {..}")."""
    text = text.strip()
    if text == "All connections":
        return _all()
    if text == "No connections":
        return {}
    if text.startswith("All but "):
        return _complement(parse_conn(text.removeprefix("All but ")))
    if re.fullmatch(r"[\d,\- ]+", text):  # ports only: every port protocol
        return {p: _ports(text) for p in PORT_PROTOS}
    cubes = re.findall(r"\{([^{}]*)\}", text)
    if not cubes or ",".join(f"{{{c}}}" for c in cubes) != text:
        raise NcaError(f"nca: cannot read connection set {text!r}")
    merged: dict[str, list[Interval]] = {}
    for body in cubes:
        for proto, ports in _cube(body).items():
            merged.setdefault(proto, []).extend(ports)
    return {p: _merge(v) for p, v in merged.items()}


def _endpoint(text: str) -> str:
    if text.endswith("]"):
        return text[: text.rindex("[")]  # "shop/app[Pod]" -> "shop/app"
    lo, _, hi = text.partition("-")
    hi = hi or lo  # nca prints a single address (a /32 peer) without a range
    try:
        ipaddress.ip_address(lo), ipaddress.ip_address(hi)
    except ValueError as exc:
        raise NcaError(f"nca: cannot read endpoint {text!r}") from exc
    return f"{lo}-{hi}"


_LINE = re.compile(r"^(?P<src>\S+) => (?P<dst>\S+) : (?P<conn>.+)$")


def parse_nca(text: str) -> set[Raw]:
    """Raw tuples (src, dst, proto, port | (lo, hi)) of a txt_no_fw_rules report.

    Pods are "ns/name", IP peers "first-last" as nca prints them; protocols are lower
    case, OTHER (port 0) standing for any protocol without ports; "All connections" is
    tcp/udp/sctp on (1, 65535) plus OTHER.
    """
    out: set[Raw] = set()
    for line in text.splitlines():
        if not line.strip():
            continue
        match = _LINE.match(line.strip())
        if match is None:
            raise NcaError(f"nca: cannot read line {line!r}")
        src, dst = _endpoint(match["src"]), _endpoint(match["dst"])
        for proto, ports in parse_conn(match["conn"]).items():
            for lo, hi in ports:
                out.add((src, dst, proto, lo if lo == hi else (lo, hi)))
    return out


def nca_connectivity(
    policy_files: Sequence[Path | str],
    pods: Mapping[str, Labels],
    namespaces: Mapping[str, Labels] | Iterable[str],
) -> set[Raw]:
    """What the policies allow, per nca, as raw tuples (see `parse_nca`)."""
    return parse_nca(run_nca(policy_files, pods, namespaces))


def nca_connectivity_many(queries: Sequence[Query]) -> list[set[Raw]]:
    """`nca_connectivity` of many queries in one nca process (for property tests)."""
    return [parse_nca(report) for report in run_nca_many(queries)]


# -- the canonical form ------------------------------------------------------------------


def _ip_int(text: str) -> int:
    addr = ipaddress.ip_address(text)
    return int(addr) + (_V6 if addr.version == 6 else 0)


def _ip_text(value: int) -> str:
    if value >= _V6:
        return str(ipaddress.IPv6Address(value - _V6))
    return str(ipaddress.IPv4Address(value))


def ip_ranges(cidrs: Iterable[str], excepts: Iterable[str] = ()) -> Ports:
    """Address intervals of some CIDRs minus others, in the canonical form's encoding."""

    def span(cidr: str) -> Interval:
        net = ipaddress.ip_network(cidr, strict=False)
        return _ip_int(str(net.network_address)), _ip_int(str(net.broadcast_address))

    holes = [span(c) for c in excepts]
    return _merge(iv for c in cidrs for iv in _minus(span(c), holes))


def _range_text(interval: Interval) -> str:
    return f"{_ip_text(interval[0])}-{_ip_text(interval[1])}"


IpItem = tuple[tuple[str, str, str], Interval, Interval]  # (key, ports, ip interval)


def _segments(items: Iterable[IpItem]) -> dict[tuple[str, str, str], Segments]:
    """Per key, the port axis cut where the allowed address set changes."""
    grouped: dict[tuple[str, str, str], list[tuple[Interval, Interval]]] = {}
    for key, ports, ips in items:
        grouped.setdefault(key, []).append((ports, ips))
    out: dict[tuple[str, str, str], Segments] = {}
    for key, entries in grouped.items():
        cuts = sorted({p[0] for p, _ in entries} | {p[1] + 1 for p, _ in entries})
        segs: list[tuple[int, int, tuple[str, ...]]] = []
        for lo, nxt in zip(cuts, cuts[1:], strict=False):
            allowed = _merge(ip for p, ip in entries if p[0] <= lo and nxt - 1 <= p[1])
            if not allowed:
                continue
            text = tuple(_range_text(iv) for iv in allowed)
            if segs and segs[-1][1] == lo - 1 and segs[-1][2] == text:
                segs[-1] = (segs[-1][0], nxt - 1, text)
            else:
                segs.append((lo, nxt - 1, text))
        out[key] = tuple(segs)
    return out


@dataclass
class Connectivity:
    """Canonical connectivity of one namespace, comparable with ==.

    pods:    (src, dst, proto) -> ports, both pods in the namespace (bare names);
    foreign: (src, dst, proto) -> ports, one side a pod of another namespace ("ns/name");
    ip:      ("in", pod, proto) or ("out", pod, proto) -> (port_lo, port_hi, ip ranges)...
    Pairs outside the namespace on both sides (kube-dns to the internet) are left out.
    """

    pods: dict[tuple[str, str, str], Ports] = field(default_factory=dict)
    foreign: dict[tuple[str, str, str], Ports] = field(default_factory=dict)
    ip: dict[tuple[str, str, str], Segments] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """A sorted, human-readable rendering (assert on it for readable diffs)."""

        def ports(ps: Iterable[Interval]) -> str:
            return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ps)

        out = [f"{s} -> {d} {p} {ports(v)}" for (s, d, p), v in self.pods.items()]
        out += [f"{s} -> {d} {p} {ports(v)} (foreign)" for (s, d, p), v in self.foreign.items()]
        for (direction, pod, proto), segs in self.ip.items():
            by_ips: dict[tuple[str, ...], list[Interval]] = {}
            for lo, hi, ips in segs:
                by_ips.setdefault(ips, []).append((lo, hi))
            for ips, spans in by_ips.items():
                peer = ",".join(ips)
                arrow = f"{peer} -> {pod}" if direction == "in" else f"{pod} -> {peer}"
                out.append(f"{arrow} {proto} {ports(spans)}")
        return sorted(out)


def _add(table: dict[tuple[str, str, str], Ports], key: tuple[str, str, str], ports: Ports) -> None:
    table[key] = _merge((*table.get(key, ()), *ports))


def normalize(raw: Iterable[Raw], namespace: str) -> Connectivity:
    """The canonical form of nca's raw tuples, seen from one namespace."""
    result = Connectivity()
    ip_items: list[IpItem] = []
    prefix = f"{namespace}/"

    def local(ep: str) -> str | None:
        return ep.removeprefix(prefix) if ep.startswith(prefix) else None

    for src, dst, proto, port in raw:
        ports = (port, port) if isinstance(port, int) else port
        s, d = local(src), local(dst)
        src_pod, dst_pod = "/" in src, "/" in dst
        if s is not None and d is not None:
            _add(result.pods, (s, d, proto), (ports,))
        elif (s is not None and dst_pod) or (d is not None and src_pod):
            _add(result.foreign, (s or src, d or dst, proto), (ports,))
        elif d is not None:
            lo, hi = src.split("-", 1)
            ip_items.append((("in", d, proto), ports, (_ip_int(lo), _ip_int(hi))))
        elif s is not None:
            lo, hi = dst.split("-", 1)
            ip_items.append((("out", s, proto), ports, (_ip_int(lo), _ip_int(hi))))
    result.ip = _segments(ip_items)
    return result


def expected_connectivity(
    conns: Iterable[tuple[str, str, str, int]],
    services: Iterable[str],
    internet: Ports | None = None,
    dns: Iterable[str] = ("udp", "tcp"),
    dns_pod: str = KUBE_DNS,
) -> Connectivity:
    """The canonical form of a spec's connections (reference.Expected.conns).

    internet: the address set that stands for "internet" (default 0.0.0.0/0, see
    `ip_ranges`); every service gets DNS (port 53, protocols `dns`) to `dns_pod`.
    """
    internet = internet if internet is not None else ip_ranges(["0.0.0.0/0"])
    result = Connectivity()
    ip_items: list[IpItem] = []

    def addresses(ep: str) -> Ports:
        return internet if ep == "internet" else ip_ranges([ep.removeprefix("cidr:")])

    names = set(services)
    for src, dst, proto, port in conns:
        if src in names and dst in names:
            _add(result.pods, (src, dst, proto), ((port, port),))
        elif dst in names:
            ip_items += [(("in", dst, proto), (port, port), iv) for iv in addresses(src)]
        elif src in names:
            ip_items += [(("out", src, proto), (port, port), iv) for iv in addresses(dst)]
    for svc in names:
        for proto in dns:
            _add(result.foreign, (svc, dns_pod, proto), ((53, 53),))
    result.ip = _segments(ip_items)
    return result
