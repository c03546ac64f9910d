"""The oracles themselves work: hand-written inputs, known answers, negative controls."""

from __future__ import annotations

import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.oracles import compose_go, compose_reach, crd, kube, reference, sarif


def pair(a: str, b: str) -> frozenset[str]:
    """An unordered pair of services."""
    return frozenset((a, b))


def need(reason: str | None) -> None:
    """Skip the test, saying why, when an oracle's tool is missing."""
    if reason:
        pytest.skip(reason)


# -- compose_reach -------------------------------------------------------------------------

SEED_LAYOUT = """
services:
  web:   {image: nginx, networks: [public, backend], ports: ["80:80", "443:443"]}
  app:   {image: app, networks: [backend, database]}
  db:    {image: postgres, networks: [database]}
  admin: {image: admin, networks: [backend]}
networks:
  public: {}
  backend: {internal: true}
  database: {internal: true}
"""


def test_seed_layout_leaks_web_to_admin() -> None:
    """The classic hand-written layout lets web reach admin: the oracle must say so."""
    r = compose_reach.reach(yaml.safe_load(SEED_LAYOUT))
    assert pair("web", "admin") in r.pairs
    assert r.pairs == {pair("web", "app"), pair("web", "admin"), pair("app", "admin"),
                       pair("app", "db")}  # fmt: skip
    assert pair("web", "db") not in r.pairs
    assert r.egress == {"web"}
    assert r.published == {("web", 80, 80, "tcp"), ("web", 443, 443, "tcp")}
    assert r.findings == []


def test_default_network_joins_everyone() -> None:
    """Services without `networks` share the implicit, non-internal default network."""
    doc = {"services": {"a": {"image": "x"}, "b": {"image": "x"}, "c": {"image": "x"}}}
    r = compose_reach.reach(doc)
    assert r.pairs == {pair("a", "b"), pair("a", "c"), pair("b", "c")}
    assert r.egress == {"a", "b", "c"}
    internal_default = {**doc, "networks": {"default": {"internal": True}}}
    assert compose_reach.reach(internal_default).egress == set()


def test_network_modes() -> None:
    """host reaches published ports (a finding), none nothing, service:X shares X."""
    doc: dict[str, Any] = {
        "services": {
            "h": {"image": "x", "network_mode": "host"},
            "web": {"image": "x", "networks": ["front"], "ports": ["8080:80"]},
            "side": {"image": "x", "network_mode": "service:web"},
            "lone": {"image": "x", "network_mode": "none"},
            "db": {"image": "x", "networks": ["back"]},
        },
        "networks": {"front": {}, "back": {"internal": True}},
    }
    r = compose_reach.reach(doc)
    assert r.pairs == {pair("h", "web"), pair("web", "side")}
    assert r.networks["side"] == {"front"}
    assert r.networks["lone"] == set()
    assert r.egress == {"h", "web", "side"}
    assert r.host_network == {"h"}
    assert any("network_mode host" in f for f in r.findings)
    assert r.net_admin == set()


def test_net_admin_is_reported_apart_from_findings() -> None:
    """cap_add NET_ADMIN (or ALL, or privileged) lands in net_admin, not in findings."""
    doc = {
        "services": {
            "a": {"image": "x", "cap_add": ["NET_ADMIN"]},
            "b": {"image": "x", "cap_add": ["CAP_NET_ADMIN", "SYS_TIME"]},
            "c": {"image": "x", "privileged": True},
            "d": {"image": "x", "cap_add": ["SYS_TIME"]},
        }
    }
    r = compose_reach.reach(doc)
    assert r.net_admin == {"a", "b", "c"}
    assert r.findings == []


def test_port_syntaxes() -> None:
    """Short, ranged, IP-bound, container-only and long port syntaxes are all read."""
    ports: list[Any] = [
        "80:8080",
        "127.0.0.1:5432:5432",
        "53:53/udp",
        "8000-8001:9000-9001",
        "9100",
        "[::1]:6000:6001",
        {"target": 443, "published": "8443", "protocol": "tcp"},
        {"target": 7000, "published": 7000, "protocol": "udp", "host_ip": "0.0.0.0"},
    ]
    r = compose_reach.reach({"services": {"s": {"image": "x", "ports": ports}}})
    assert r.published == {
        ("s", 80, 8080, "tcp"),
        ("s", 5432, 5432, "tcp"),
        ("s", 53, 53, "udp"),
        ("s", 8000, 9000, "tcp"),
        ("s", 8001, 9001, "tcp"),
        ("s", None, 9100, "tcp"),
        ("s", 6000, 6001, "tcp"),
        ("s", 8443, 443, "tcp"),
        ("s", 7000, 7000, "udp"),
    }


ADDRESSED = {
    "services": {
        "a": {"image": "x", "networks": {"n1": {"ipv4_address": "10.89.0.2"}}},
        "b": {"image": "x", "networks": {"n1": {"ipv4_address": "10.89.0.3"}}},
    },
    "networks": {"n1": {"ipam": {"config": [{"subnet": "10.89.0.0/24"}]}}},
}


def test_addresses_and_subnets_are_read() -> None:
    """Static addresses and subnets are reported where the compose file puts them."""
    r = compose_reach.reach(ADDRESSED)
    assert r.addresses == {("a", "n1"): "10.89.0.2", ("b", "n1"): "10.89.0.3"}
    assert r.subnets == {"n1": "10.89.0.0/24"}
    assert compose_reach.check_addresses(ADDRESSED) == []


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("10.90.0.2", "outside the subnet"),
        ("10.89.0.3", "also used by"),
        ("10.89.0.1", "gateway"),
        ("10.89.0.0", "network or broadcast"),
        ("10.89.0.255", "network or broadcast"),
        ("10.89.0.300", "not an IPv4 address"),
    ],
)
def test_bad_addresses_are_caught(address: str, problem: str) -> None:
    """Each kind of bad static address is reported (compose-go catches none of them)."""
    doc = yaml.safe_load(yaml.safe_dump(ADDRESSED))
    doc["services"]["a"]["networks"]["n1"]["ipv4_address"] = address
    problems = compose_reach.check_addresses(doc)
    assert len(problems) == 1 and problem in problems[0], problems


def test_overlapping_subnets_and_missing_subnet_are_caught() -> None:
    """Two networks with overlapping subnets, or an address on a network without one."""
    doc = yaml.safe_load(yaml.safe_dump(ADDRESSED))
    doc["networks"]["n2"] = {"ipam": {"config": [{"subnet": "10.89.0.128/25"}]}}
    doc["networks"]["n3"] = {}
    doc["services"]["b"]["networks"]["n3"] = {"ipv4_address": "10.1.0.2"}
    problems = compose_reach.check_addresses(doc)
    assert any("overlap" in p for p in problems)
    assert any("has no subnet" in p for p in problems)


# -- compose-go ----------------------------------------------------------------------------

GOOD_COMPOSE = """
services:
  web:
    image: nginx:1.27
    networks:
      edge: {}
      backend: {ipv4_address: 10.89.1.2}
    ports: ["80:80", "8000-8001:9000-9001/udp"]
    secrets: [cert]
networks:
  edge: {}
  backend:
    internal: true
    ipam: {config: [{subnet: 10.89.1.0/24}]}
secrets:
  cert: {file: ./missing-cert.pem}
"""


def write(tmp_path: Path, text: str, name: str = "compose.yaml") -> Path:
    """Write text (dedented) to tmp_path/name."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_compose_go_accepts_a_good_file(tmp_path: Path) -> None:
    """A valid file passes, and config_json shows the normalized project."""
    need(compose_go.skip_reason())
    path = write(tmp_path, GOOD_COMPOSE)
    ok, err = compose_go.config_check(path, "shop")
    assert ok, err
    project = compose_go.config_json(path, "shop")
    assert project["networks"]["backend"]["internal"] is True
    ports = {
        (p["published"], p["target"], p["protocol"]) for p in project["services"]["web"]["ports"]
    }
    assert ports == {("80", 80, "tcp"), ("8000", 9000, "udp"), ("8001", 9001, "udp")}


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("internal: true", 'internal: "yes please"', "invalid boolean"),
        ("      edge: {}", "      edgy: {}", "undefined network"),
        ("secrets: [cert]", "secrets: [nope]", "undefined secret"),
        ("image: nginx:1.27", "image: nginx:1.27\n    bogus: 1", "bogus"),
        ('"80:80"', '"80:80:80:80"', ""),
    ],
)
def test_compose_go_rejects_bad_files(tmp_path: Path, old: str, new: str, message: str) -> None:
    """Bad types, undefined networks and secrets, unknown keys and bad ports fail."""
    need(compose_go.skip_reason())
    text = textwrap.dedent(GOOD_COMPOSE)
    assert old in text
    ok, err = compose_go.config_check(write(tmp_path, text.replace(old, new, 1)), "shop")
    assert not ok
    assert message in err


def test_compose_go_misses_secret_files_and_bad_addresses(tmp_path: Path) -> None:
    """compose-go accepts a missing secret file and a bogus ipv4_address: our checks catch them."""
    need(compose_go.skip_reason())
    text = textwrap.dedent(GOOD_COMPOSE).replace("10.89.1.2", "10.99.1.300")
    path = write(tmp_path, text)
    assert compose_go.config_check(path, "shop")[0]
    project = compose_go.config_json(path, "shop")
    assert compose_go.missing_secret_files(project) == [
        f"secret 'cert': file {tmp_path.resolve()}/missing-cert.pem does not exist"
    ]
    (tmp_path / "missing-cert.pem").write_text("x")
    assert compose_go.missing_secret_files(project) == []
    assert compose_reach.check_addresses(yaml.safe_load(text)) == [
        "service 'web' on network 'backend': '10.99.1.300' is not an IPv4 address"
    ]


# -- reference -----------------------------------------------------------------------------

DESIGN_EXAMPLE = """
version = 1

[stack]
name = "shop"
subnet_pool = "10.89.0.0/16"

[[tiers]]
name = "public"
[[tiers]]
name = "backend"
[[tiers]]
name = "data"

[services.web]
tier = "public"
image = "nginx:1.27"
listen = [80, 443]
publish = ["80:80", "443:443"]

[services.app]
tier = "backend"
image = "myapp:1.0"
listen = [8000]

[services.admin]
tier = "backend"
image = "admin-panel:1.0"
listen = [8080]

[services.db]
tier = "data"
image = "postgres:16"
listen = [5432]

[[flows]]
from = "internet"
to = "web"
ports = [80, 443]

[[flows]]
from = "web"
to = "app"
ports = [8000]

[[flows]]
from = "admin"
to = "app"
ports = [8000]

[[flows]]
from = "app"
to = "db"
ports = [5432]
tls = true
"""


def test_reference_on_the_design_example() -> None:
    """DESIGN.md section 2's example, expanded by hand."""
    e = reference.expected_from_toml(DESIGN_EXAMPLE)
    assert e.conns == {
        ("internet", "web", "tcp", 80),
        ("internet", "web", "tcp", 443),
        ("web", "app", "tcp", 8000),
        ("admin", "app", "tcp", 8000),
        ("app", "db", "tcp", 5432),
    }
    assert e.pairs == {pair("web", "app"), pair("admin", "app"), pair("app", "db")}
    assert pair("web", "admin") not in e.pairs
    assert e.published == {("web", 80, 80, "tcp"), ("web", 443, 443, "tcp")}
    assert e.egress == set() and e.egress_conns == set()
    assert e.ingress_conns == {("internet", "web", "tcp", 80), ("internet", "web", "tcp", 443)}
    assert e.tls == {("app", "db")}


EXPANSION_SPEC = """
version = 1
[stack]
name = "s"
[[tiers]]
name = "edge"
[[tiers]]
name = "mid"
[services.lb]
tier = "edge"
listen = [80, "8443/tcp"]
publish = ["8080:80"]
[services.dns]
tier = "edge"
listen = ["53/udp", 53]
[services.api]
tier = "mid"
listen = ["9000-9002/tcp"]
[services.worker]
tier = "mid"
listen = [7000]

[[flows]]
from = ["internet", "cidr:10.8.0.0/24"]
to = "lb"
ports = [80]
[[flows]]
from = "cidr:10.8.0.0/24"
to = "dns"
[[flows]]
from = "tier:edge"
to = "tier:mid"
[[flows]]
from = "tier:mid"
to = "tier:mid"
[[flows]]
from = "worker"
to = ["internet", "cidr:192.0.2.0/24"]
ports = ["443/tcp", "123/udp"]
"""


def test_reference_expands_tiers_lists_ranges_and_defaults() -> None:
    """tier: and lists expand; default ports are each destination's own; ranges are every port."""
    e = reference.expected(tomllib.loads(EXPANSION_SPEC))
    mid = {("api", "tcp", p) for p in (9000, 9001, 9002)} | {("worker", "tcp", 7000)}
    assert e.conns == (
        {("internet", "lb", "tcp", 80), ("cidr:10.8.0.0/24", "lb", "tcp", 80)}
        | {("cidr:10.8.0.0/24", "dns", "udp", 53), ("cidr:10.8.0.0/24", "dns", "tcp", 53)}
        | {(src, dst, proto, port) for src in ("lb", "dns") for dst, proto, port in mid}
        # tier:mid -> tier:mid: each one's own ports; worker -> worker is a self-flow, dropped
        | {("api", "worker", "tcp", 7000)}
        | {("worker", "api", "tcp", p) for p in (9000, 9001, 9002)}
        | {("worker", dst, proto, port) for dst in ("internet", "cidr:192.0.2.0/24")
           for proto, port in (("tcp", 443), ("udp", 123))}
    )  # fmt: skip
    assert e.published == {("lb", 8080, 80, "tcp"), ("dns", 53, 53, "udp"), ("dns", 53, 53, "tcp")}
    assert e.egress == {"worker"}
    assert len(e.egress_conns) == 4
    assert e.pairs == {pair(s, d) for s in ("lb", "dns") for d in ("api", "worker")} | {
        pair("api", "worker")
    }


def test_reference_parse_ports() -> None:
    """The three port forms of section 2."""
    assert reference.parse_ports(80) == [("tcp", 80)]
    assert reference.parse_ports("53/udp") == [("udp", 53)]
    assert reference.parse_ports("8000-8002/tcp") == [("tcp", 8000), ("tcp", 8001), ("tcp", 8002)]
    with pytest.raises(ValueError):
        reference.parse_ports(True)


# -- Kubernetes ----------------------------------------------------------------------------

ALLOW_APP_TO_DB = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dns, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
      podSelector: {matchLabels: {k8s-app: kube-dns}}
    ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-ingress, namespace: shop}
spec:
  podSelector: {matchLabels: {app.kubernetes.io/name: db}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app.kubernetes.io/name: app}}
    ports: [{protocol: TCP, port: 5432}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: app-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {app.kubernetes.io/name: app}}
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector: {matchLabels: {app.kubernetes.io/name: db}}
    ports: [{protocol: TCP, port: 5432}]
  - to:
    - ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16]}
    ports: [{protocol: TCP, port: 443}, {protocol: UDP, port: 123}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app.kubernetes.io/name: web}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16]}
    ports: [{protocol: TCP, port: 80}, {protocol: TCP, port: 443}]
  - from:
    - ipBlock: {cidr: 10.8.0.0/24}
    ports: [{protocol: TCP, port: 8000, endPort: 8002}]
"""

SERVICES = ["web", "app", "db", "admin"]
PRIVATE = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]


def test_kubernetes_validate_accepts_good_and_rejects_bad(tmp_path: Path) -> None:
    """A good policy passes; a misspelt field and a wrongly typed port fail."""
    need(kube.validate_skip_reason())
    good = write(tmp_path, ALLOW_APP_TO_DB, "good.yaml")
    ok, out = kube.validate([good])
    assert ok, out
    typo = write(
        tmp_path, ALLOW_APP_TO_DB.replace("ipBlock: {cidr: 10.8", "ipBlok: {cidr: 10.8"), "t.yaml"
    )
    ok, out = kube.validate([typo])
    assert not ok and "'ipBlok' was unexpected" in out
    port = write(tmp_path, ALLOW_APP_TO_DB.replace("port: 5432}", "port: [5432]}"), "p.yaml")
    assert not kube.validate([good, port])[0]


def test_nca_reports_allowed_and_not_denied(tmp_path: Path) -> None:
    """app -> db 5432 is allowed, web -> db is not; ipBlock, UDP and ranges come through."""
    need(kube.nca_skip_reason())
    policy = write(tmp_path, ALLOW_APP_TO_DB, "policies.yaml")
    pods, namespaces = kube.stack_cluster("shop", SERVICES)
    raw = kube.nca_connectivity([policy], pods, namespaces)
    assert ("shop/app", "shop/db", "tcp", 5432) in raw
    assert not any(s == "shop/web" and d == "shop/db" for s, d, _, _ in raw)
    assert ("10.8.0.0-10.8.0.255", "shop/web", "tcp", (8000, 8002)) in raw

    got = kube.normalize(raw, "shop")
    internet = kube.ip_ranges(["0.0.0.0/0"], PRIVATE)
    want = kube.expected_connectivity(
        [
            ("app", "db", "tcp", 5432),
            ("app", "internet", "tcp", 443),
            ("app", "internet", "udp", 123),
            ("internet", "web", "tcp", 80),
            ("internet", "web", "tcp", 443),
            *[("cidr:10.8.0.0/24", "web", "tcp", p) for p in (8000, 8001, 8002)],
        ],
        SERVICES,
        internet=internet,
    )
    assert got.lines() == want.lines()
    assert got == want


LEAK = """
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: leak, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{podSelector: {}}]}]
  egress: [{to: [{podSelector: {}}]}]
"""


def test_nca_negative_control_sees_an_extra_flow(tmp_path: Path) -> None:
    """One more policy opening the namespace makes the result differ from the expectation."""
    need(kube.nca_skip_reason())
    pods, namespaces = kube.stack_cluster("shop", SERVICES)
    paths = [write(tmp_path, ALLOW_APP_TO_DB, "a.yaml"), write(tmp_path, LEAK, "b.yaml")]
    got = kube.normalize(kube.nca_connectivity(paths, pods, namespaces), "shop")
    assert got.pods[("web", "db", "tcp")] == (kube.FULL,)
    assert got.pods[("db", "app", "udp")] == (kube.FULL,)
    assert ("web", "db", "tcp") not in kube.expected_connectivity([], SERVICES).pods


def test_nca_rejects_invalid_policies(tmp_path: Path) -> None:
    """A policyTypes typo that kubernetes-validate misses makes nca exit 7."""
    need(kube.nca_skip_reason())
    bad = write(tmp_path, ALLOW_APP_TO_DB.replace("[Ingress, Egress]", "[Ingres]"), "bad.yaml")
    pods, namespaces = kube.stack_cluster("shop", SERVICES)
    with pytest.raises(kube.NcaError, match="exit 7"):
        kube.nca_connectivity([bad], pods, namespaces)


def test_nca_many_matches_single_runs(tmp_path: Path) -> None:
    """One nca process for several queries gives what separate runs give."""
    need(kube.nca_skip_reason())
    pods, namespaces = kube.stack_cluster("shop", SERVICES)
    a = write(tmp_path, ALLOW_APP_TO_DB, "a.yaml")
    b = write(tmp_path, LEAK, "b.yaml")
    many = kube.nca_connectivity_many([([a], pods, namespaces), ([a, b], pods, namespaces)])
    assert many[0] == kube.nca_connectivity([a], pods, namespaces)
    assert many[1] == kube.nca_connectivity([a, b], pods, namespaces)
    assert ("web", "db", "tcp") in kube.normalize(many[1], "shop").pods
    assert ("web", "db", "tcp") not in kube.normalize(many[0], "shop").pods


NCA_SAMPLE = """\
0.0.0.0-9.255.255.255 => shop/web[Pod] : {protocols:TCP,dst_ports:80,443}
11.0.0.0-255.255.255.255 => shop/web[Pod] : {protocols:TCP,dst_ports:80,443}
10.8.0.0-10.8.0.255 => shop/web[Pod] : {protocols:TCP,dst_ports:8000-8002}
kube-system/kube-dns[Pod] => 0.0.0.0-255.255.255.255 : All connections
shop/app[Pod] => kube-system/kube-dns[Pod] : {protocols:TCP, UDP,dst_ports:53}
shop/app[Pod] => shop/db[Pod] : {protocols:TCP,dst_ports:5432}
shop/web[Pod] => shop/app[Pod] : {protocols:UDP,dst_ports:9000}
shop/web[Pod] => shop/app[Pod] : {protocols:TCP}
shop/admin[Pod] => shop/app[Pod] : All but {protocols:TCP,dst_ports:22}
"""


def test_parse_nca_format() -> None:
    """The txt_no_fw_rules format, read without running nca."""
    raw = kube.parse_nca(NCA_SAMPLE)
    assert ("shop/app", "kube-system/kube-dns", "udp", 53) in raw
    assert ("shop/web", "shop/app", "tcp", (1, 65535)) in raw
    assert ("shop/admin", "shop/app", "tcp", (23, 65535)) in raw
    assert ("shop/admin", "shop/app", "other", 0) in raw
    got = kube.normalize(raw, "shop")
    assert got.pods[("app", "db", "tcp")] == ((5432, 5432),)
    assert got.pods[("admin", "app", "tcp")] == ((1, 21), (23, 65535))
    assert got.foreign == {
        ("app", "kube-system/kube-dns", "tcp"): ((53, 53),),
        ("app", "kube-system/kube-dns", "udp"): ((53, 53),),
    }
    assert got.ip[("in", "web", "tcp")] == (
        (80, 80, ("0.0.0.0-9.255.255.255", "11.0.0.0-255.255.255.255")),
        (443, 443, ("0.0.0.0-9.255.255.255", "11.0.0.0-255.255.255.255")),
        (8000, 8002, ("10.8.0.0-10.8.0.255",)),
    )
    assert "0.0.0.0-9.255.255.255,11.0.0.0-255.255.255.255 -> web tcp 80,443" in got.lines()
    with pytest.raises(kube.NcaError):
        kube.parse_nca("shop/a[Pod] => shop/b[Pod] : {protocols:TCP,src_ports:1}")
    with pytest.raises(kube.NcaError):
        kube.parse_nca("something else entirely")


def test_ip_ranges_and_adjacent_atoms_merge() -> None:
    """nca's split atoms merge back into the ranges a cidr stands for."""
    text = (
        "0.0.0.0-10.7.255.255 => shop/web[Pod] : {protocols:TCP,dst_ports:80}\n"
        "10.8.0.0-10.8.0.255 => shop/web[Pod] : {protocols:TCP,dst_ports:80,22}\n"
        "10.8.1.0-255.255.255.255 => shop/web[Pod] : {protocols:TCP,dst_ports:80}\n"
    )
    got = kube.normalize(kube.parse_nca(text), "shop")
    want = kube.expected_connectivity(
        [("internet", "web", "tcp", 80), ("cidr:10.8.0.0/24", "web", "tcp", 22)], ["web"], dns=()
    )
    assert got == want
    v6 = "shop/app[Pod] => ::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff : "
    v6 += "{protocols:TCP,dst_ports:443}"
    everywhere = kube.ip_ranges(["0.0.0.0/0", "::/0"])
    assert kube.normalize(kube.parse_nca(text + v6), "shop") != want
    assert kube.normalize(kube.parse_nca(v6), "shop") == kube.expected_connectivity(
        [("app", "internet", "tcp", 443)], ["app"], internet=kube.ip_ranges(["::/0"]), dns=()
    )
    assert len(everywhere) == 2  # IPv4 and IPv6 never merge into one range
    assert kube.ip_ranges(["0.0.0.0/0"], PRIVATE) == kube.ip_ranges(
        ["0.0.0.0/5", "8.0.0.0/7", "11.0.0.0/8", "12.0.0.0/6", "16.0.0.0/4", "32.0.0.0/3",
         "64.0.0.0/2", "128.0.0.0/3", "160.0.0.0/5", "168.0.0.0/6", "172.0.0.0/12",
         "172.32.0.0/11", "172.64.0.0/10", "172.128.0.0/9", "173.0.0.0/8", "174.0.0.0/7",
         "176.0.0.0/4", "192.0.0.0/9", "192.128.0.0/11", "192.160.0.0/13", "192.169.0.0/16",
         "192.170.0.0/15", "192.172.0.0/14", "192.176.0.0/12", "192.192.0.0/10",
         "193.0.0.0/8", "194.0.0.0/7", "196.0.0.0/6", "200.0.0.0/5", "208.0.0.0/4",
         "224.0.0.0/3"]
    )  # fmt: skip


# -- SARIF and CRDs ------------------------------------------------------------------------

SARIF_LOG: dict[str, Any] = {
    "version": "2.1.0",
    "runs": [
        {
            "tool": {"driver": {"name": "castle", "rules": [{"id": "shared-network"}]}},
            "results": [
                {
                    "ruleId": "shared-network",
                    "level": "error",
                    "message": {"text": "web and admin share network backend"},
                    "locations": [
                        {
                            "physicalLocation": {
                                "artifactLocation": {"uri": "compose.yaml"},
                                "region": {"startLine": 3},
                            }
                        }
                    ],
                }
            ],
        }
    ],
}


def test_sarif_schema() -> None:
    """A minimal SARIF log passes; a bad level and a missing version fail."""
    assert sarif.validate(SARIF_LOG) == []
    bad = yaml.safe_load(yaml.safe_dump(SARIF_LOG))
    bad["runs"][0]["results"][0]["level"] = "fatal"
    assert any("fatal" in p for p in sarif.validate(bad))
    assert any("version" in p for p in sarif.validate({"runs": []}))


ISTIO_POLICY: dict[str, Any] = {
    "apiVersion": "security.istio.io/v1",
    "kind": "AuthorizationPolicy",
    "metadata": {"name": "db", "namespace": "shop"},
    "spec": {
        "selector": {"matchLabels": {"app.kubernetes.io/name": "db"}},
        "action": "ALLOW",
        "rules": [
            {
                "from": [{"source": {"principals": ["cluster.local/ns/shop/sa/app"]}}],
                "to": [{"operation": {"ports": ["5432"]}}],
            }
        ],
    },
}


def test_crd_schemas() -> None:
    """Good Istio, Linkerd and Kustomization objects pass; typos and bad values fail."""
    need(crd.skip_reason())
    assert crd.validate(ISTIO_POLICY) == []
    bad = yaml.safe_load(yaml.safe_dump(ISTIO_POLICY))
    bad["spec"]["action"] = "PERMIT"
    assert any("PERMIT" in p for p in crd.validate(bad))
    server = {
        "apiVersion": "policy.linkerd.io/v1beta3",
        "kind": "Server",
        "metadata": {"name": "db", "namespace": "shop"},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "port": 5432},
    }
    assert crd.validate(server) == []
    server["spec"]["prot"] = 1
    assert any("prot" in p for p in crd.validate(server))
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["networkpolicies.yaml"],
        "secretGenerator": [{"name": "db-tls", "files": ["tls.crt=db.crt"]}],
    }
    assert crd.validate(kustomization) == []
    assert crd.validate({**kustomization, "resourcez": []}) != []
    assert crd.validate({"apiVersion": "example.com/v1", "kind": "Nope"}) != []
