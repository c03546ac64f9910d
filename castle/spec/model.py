"""The models of zones.toml (format version 1): shape and per-field checks only.

Each model is a record (castle/spec/record.py) whose fields pydantic's validator core
checks; the per-field checks are the functions beside each model.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal, get_args

from pydantic_core import PydanticCustomError

from castle.spec.addresses import ADDRESS, UNUSABLE_POOLS
from castle.spec.pools import default_pool
from castle.spec.record import (
    STR,
    STRICT_BOOL,
    TABLE,
    Record,
    Type,
    after,
    before,
    checker,
    dict_of,
    field,
    list_of,
    literal,
    nullable,
    plain,
    record,
    strict_int,
    union,
)
from castle.spec.values import (
    ENDPOINTS,
    LABEL,
    OWNED_HINTS,
    PORT_LIST,
    PUBLISH_LIST,
    TEXT,
    PortRange,
    PublishEntry,
    _text,
    check_labels,
    compiled,
    image_problem,
    passthrough_problem,
    port_list,
)

# Reserved peer names: they mean something else in `from` / `to`.
RESERVED = frozenset({"internet"})
# Keys castle owns in a compose service; passthrough may not set them.
OWNED_COMPOSE_KEYS = frozenset(
    {
        "networks", "ports", "secrets", "network_mode", "links", "external_links", "image",
        "expose", "extends",
    }
)
TARGETS = ("compose", "iptables", "nftables", "k8s", "mesh")
# What "internet" never means, in every target (Kubernetes' usual ipBlock except list plus
# link-local, which holds the cloud metadata endpoint): private and link-local ranges.
NOT_INTERNET = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16")
METADATA = "169.254.169.254/32"  # the cloud metadata endpoint: only a flow naming it reaches it
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"  # these: compiled on first use
TLS_REF = re.compile(r"ca|server_cert|server_key|(client_cert|client_key):([a-z0-9-]{1,63})")
_TOP_NAME = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$"


_HOST_ALIAS = r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,252}[A-Za-z0-9])?$"




def _network(value: Any) -> ipaddress.IPv4Network:
    """An IPv4 network from its text (host bits must be zero), as pydantic reads one."""
    if isinstance(value, ipaddress.IPv4Network):
        return value
    try:
        return ipaddress.IPv4Network(value)
    except (ValueError, TypeError):
        raise PydanticCustomError("ip_v4_network", "Input is not a valid IPv4 network") from None


NETWORK = plain(_network, {"type": "string", "format": "ipv4network"})
STR_TABLE = dict_of(STR, STR)


def _pool(v: ipaddress.IPv4Network | None) -> ipaddress.IPv4Network | None:
    if v is None:
        return v
    for bad, why in UNUSABLE_POOLS:
        if v.overlaps(bad):
            raise ValueError(f"{v} overlaps {bad} ({why}); use private space such as "
                             "10.89.0.0/16")
    return v


class Stack(Record):
    """The `[stack]` table: project name and address pool."""

    name: str = field(LABEL, "compose project name and default Kubernetes namespace "
                      "(DNS-1123 label)")
    subnet_pool: ipaddress.IPv4Network | None = field(
        after(_pool, nullable(NETWORK)),
        "IPv4 pool the compose networks' subnets are allocated from (default: a /16 in "
        "10.128.0.0/9 chosen from the stack name, so stacks on one host differ)",
        default=None,
    )
    description: str = field(TEXT, "free text, carried into generated headers", default="")
    targets: list[Literal["compose", "iptables", "nftables", "k8s", "mesh"]] | None = field(
        nullable(list_of(literal(*TARGETS))),
        "targets to emit (default: all; mesh only when [mesh] kind is set)", default=None,
    )

    @property
    def pool(self) -> ipaddress.IPv4Network:
        """The pool in use: subnet_pool, or the stack's own default."""
        return self.subnet_pool or default_pool(self.name)


class Tier(Record):
    """One wall; order in the file is depth (outermost first)."""

    name: str = field(LABEL, "tier name (DNS-1123 label); position in [[tiers]] is depth, "
                      "outermost first")
    description: str = field(TEXT, "free text", default="")


Recipe = Literal["postgres", "mysql", "mariadb", "redis", "valkey", "nginx", "generic"]
RECIPES: tuple[Recipe, ...] = get_args(Recipe)


class ServiceTls(Record):
    """The `[services.NAME.tls]` table: how castle wires TLS into this service."""

    recipe: Literal["auto", "postgres", "mysql", "mariadb", "redis", "valkey", "nginx",
                    "generic"] = field(
        literal("auto", *RECIPES),
        "server recipe: the flags, config files and environment this server needs for mutual "
        "TLS (see docs/tls.md); auto picks it from the image name (postgres, mysql, mariadb, "
        "redis, valkey, nginx), anything else is generic (TLS_*_FILE variables)",
        default="auto",
    )


_IMAGE_RECIPES: dict[str, Recipe] = {
    "postgres": "postgres", "postgresql": "postgres", "mysql": "mysql", "mariadb": "mariadb",
    "redis": "redis", "valkey": "valkey", "nginx": "nginx",
}


def image_recipe(image: str) -> Recipe:
    """The TLS server recipe an image implies: its repository's last path component."""
    last = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return _IMAGE_RECIPES.get(last.split(":", 1)[0].lower(), "generic")


def spec_recipe(svc: Service) -> Recipe:
    """A service's TLS recipe: `[services.X.tls] recipe`, or the one its image implies."""
    chosen = svc.tls.recipe if svc.tls is not None else "auto"
    return image_recipe(svc.image) if chosen == "auto" else chosen


def _image(v: str) -> str:
    problem = image_problem(v)
    if problem:
        raise ValueError(problem)
    return v


_IMAGE = after(_image, STR)
_IMAGE_CHECK = checker(_IMAGE)


def _known_image(value: Any) -> Any:  # as values.py's fields: a valid one in one call
    return value if type(value) is str and not image_problem(value) else _IMAGE_CHECK(value)


def _aliases(v: list[str]) -> list[str]:
    for alias in v:
        if not compiled(_HOST_ALIAS).fullmatch(alias):
            raise ValueError(f"{alias[:60]!r} is not a host name")
    return v


def _secrets(v: list[str | dict[str, Any]]) -> list[str | dict[str, Any]]:
    for item in v:
        source = item if isinstance(item, str) else item.get("source")
        if not isinstance(source, str) or not compiled(_TOP_NAME).fullmatch(source):
            raise ValueError(f"{str(source)[:60]!r} is not a secret name (a string, or a "
                             "table with `source`)")
        problem = passthrough_problem(item)
        if problem:
            raise ValueError(problem)
    return v


def _labels(v: dict[str, str] | None) -> dict[str, str] | None:
    check_labels(v or {})
    if v is not None and not v:
        raise ValueError("labels may not be empty: pods could not be selected")
    return v


def _tls_env(v: dict[str, str]) -> dict[str, str]:
    for key, val in v.items():
        if not compiled(_ENV_NAME).fullmatch(key):
            raise ValueError(f"{key[:60]!r} is not an environment variable name")
        _text(val)
        if not (val.startswith("=") or TLS_REF.fullmatch(val)):
            raise ValueError(
                f"{key}: {val[:60]!r} is not a TLS file reference (ca, server_cert, "
                'server_key, client_cert:DEST, client_key:DEST) or an "=literal" value'
            )
    return v


def _compose(v: dict[str, Any]) -> dict[str, Any]:
    owned = sorted(OWNED_COMPOSE_KEYS & set(v))
    if owned:
        ways = dict.fromkeys(OWNED_HINTS[k] for k in owned)
        raise ValueError(f"castle owns {', '.join(owned)}: {'; '.join(ways)}")
    for key, value in v.items():
        problem = passthrough_problem(value)
        if problem:
            raise ValueError(f"{key}: {problem}")
    env = v.get("environment")
    if env is not None and not (
        (isinstance(env, dict) and all(isinstance(x, str | int | float | bool)
                                       for x in env.values()))
        or (isinstance(env, list) and all(isinstance(x, str) for x in env))
    ):
        raise ValueError("environment must be a table of values or a list of "
                         "\"KEY=value\" strings")
    return v


class Service(Record):
    """A container of the stack and what castle needs to wall it."""

    tier: str = field(LABEL, "the tier (wall) this service sits in")
    image: str = field(plain(_known_image, _IMAGE.json), "container image reference")
    listen: list[PortRange] = field(
        PORT_LIST, 'container ports: 80 (tcp), "53/udp", "8000-8010/tcp"', factory=list)
    publish: list[PublishEntry] = field(
        PUBLISH_LIST, "host:container renames of ports that flows from outside publish",
        factory=list)
    description: str = field(TEXT, "free text, carried into artifacts as comments", default="")
    labels: dict[str, str] | None = field(
        after(_labels, nullable(STR_TABLE)),
        "Kubernetes pod labels that select it (default app.kubernetes.io/name)", default=None)
    service_account: str | None = field(
        nullable(LABEL), "Kubernetes service account, the mesh identity (default: name)",
        default=None)
    tls_env: dict[str, str] = field(
        after(_tls_env, STR_TABLE),
        "env var -> ca | server_cert | server_key | client_cert:DEST | client_key:DEST | "
        "=literal", factory=dict)
    tls: ServiceTls | None = field(
        nullable(record(ServiceTls)),
        "TLS wiring of this service: the server recipe (optional)", default=None)
    container_firewall: bool = field(
        STRICT_BOOL, "also emit an in-container firewall script (needs NET_ADMIN; discouraged)",
        default=False)
    compose: dict[str, Any] = field(
        after(_compose, TABLE),
        "extra compose keys passed through (castle owns networks, ports, secrets)",
        factory=dict)
    aliases: list[str] = field(
        after(_aliases, list_of(STR)),
        "other host names the service answers to on each of its networks (compose network "
        "aliases), e.g. its name before `castle import` renamed it", factory=list)
    secrets: list[str | dict[str, Any]] = field(
        after(_secrets, list_of(union(STR, TABLE))),
        "compose secrets the service mounts (names or long-syntax tables, as compose writes "
        "them), declared under [compose.secrets]; castle adds its TLS ones", factory=list)
    address: ipaddress.IPv4Address | None = field(
        nullable(ADDRESS),
        "an IPv4 address it keeps (others name it): its network with the most callers gets a "
        "subnet around it; default: one from subnet_pool", default=None)


def _ports_nonempty(v: list[PortRange] | None) -> list[PortRange] | None:
    if v is not None and not v:
        raise ValueError("an empty port list allows nothing; leave `ports` out for all")
    return v


# as values.py's fields: valid ports, as TOML writes them, in one call; any other value
# through the checks above
_FLOW_PORTS = after(_ports_nonempty, nullable(PORT_LIST))
_FLOW_PORTS_CHECK = checker(_FLOW_PORTS)


def _known_flow_ports(value: Any) -> Any:
    ports = port_list(value)
    return ports if ports else _FLOW_PORTS_CHECK(value)


class Flow(Record):
    """An allowed, directed connection: `from` opens connections to `to`."""

    from_: list[str] = field(
        ENDPOINTS,
        "who opens connections: a service, tier:NAME, internet, cidr:A.B.C.D/N, or a list",
        alias="from")
    to: list[str] = field(
        ENDPOINTS,
        "who accepts them: a service, tier:NAME, internet, cidr:A.B.C.D/N, or a list")
    ports: list[PortRange] | None = field(
        plain(_known_flow_ports, _FLOW_PORTS.json),
        "ports allowed (default: each destination's own listen ports); required for egress",
        default=None)
    tls: bool = field(
        STRICT_BOOL, "mutual TLS on this flow: certificates and secrets for both ends",
        default=False)
    description: str = field(
        TEXT, "free text, carried into artifacts as comments and annotations", default="")
    waiver: str = field(
        TEXT, "why this flow may break a wall rule; carried into the artifacts", default="")


_LOG_RATE = r"^[1-9][0-9]{0,5}/(second|minute|hour|day)$"


def _log_rate(v: str) -> str:
    if not compiled(_LOG_RATE).fullmatch(v):
        raise ValueError(f"{v!r} is not a rate: write N/second, N/minute, N/hour or N/day "
                         "(e.g. \"10/minute\")")
    return v


class Firewall(Record):
    """The `[firewall]` table: host firewall settings."""

    ssh_port: int = field(
        strict_int(1, 65535), "host SSH port the INPUT rules always keep open", default=22)
    ssh_sources: list[ipaddress.IPv4Network] = field(
        list_of(NETWORK),
        "IPv4 sources allowed to reach SSH on the host; when they narrow it, SSH over IPv6 is "
        "closed, and compose subnets are allocated around any of them that lies inside "
        "subnet_pool",
        factory=lambda: [ipaddress.IPv4Network("0.0.0.0/0")])
    manage_input: bool = field(
        STRICT_BOOL, "also guard the host's INPUT chain (containers may not reach the host)",
        default=True)
    log_drops: bool = field(
        STRICT_BOOL,
        "log dropped connection attempts to and from the stack's services, rate-limited, "
        "prefixed 'castle/<stack>/<service> ' (egress: '.../<service>/out '); see "
        "docs/persistence-and-logging.md", default=False)
    log_rate: str = field(
        after(_log_rate, STR),
        "most log lines per service and direction, as N/second|minute|hour|day (bursts of 5 "
        "pass first)", default="10/minute", json={"pattern": _LOG_RATE})
    log_group: int | None = field(
        nullable(strict_int(0, 65535)),
        "send the lines to NFLOG group N (ulogd2, tcpdump -i nflog:N) instead of the kernel "
        "log (journalctl -k, dmesg)", default=None)


POD_LABELS = after(check_labels, STR_TABLE)


class Kubernetes(Record):
    """The `[kubernetes]` table: namespace and how internet traffic enters and leaves."""

    namespace: str | None = field(
        nullable(LABEL), "namespace of the policies (default: the stack name)", default=None)
    ingress_namespace: str | None = field(
        nullable(LABEL),
        "internet ingress comes from this namespace (an ingress controller) instead of ipBlock",
        default=None)
    ingress_pod_labels: dict[str, str] = field(
        POD_LABELS, "pod labels of the ingress controller in ingress_namespace", factory=dict)
    egress_except: list[ipaddress.IPv4Network] = field(
        list_of(NETWORK),
        "ranges that 'internet' egress never reaches, in the Kubernetes ipBlocks and the host "
        "firewall alike (default: 10/8, 172.16/12, 192.168/16, 169.254/16); 169.254.169.254 "
        "(cloud metadata) is always excluded unless a flow names it",
        factory=lambda: [ipaddress.IPv4Network(r) for r in NOT_INTERNET])
    tier_namespaces: bool = field(
        STRICT_BOOL, "one namespace per tier (<namespace>-<tier>)", default=False)
    dns_namespace: str = field(
        LABEL, "namespace of the cluster DNS pods kept reachable", default="kube-system")
    dns_pod_labels: dict[str, str] = field(
        POD_LABELS, "labels of the cluster DNS pods", factory=lambda: {"k8s-app": "kube-dns"})
    ingress_service_account: str | None = field(
        nullable(LABEL),
        "service account of the ingress controller's pods in ingress_namespace: the one mesh "
        "identity allowed in from outside (required with a mesh and ingress_pod_labels)",
        default=None)
    workloads: bool = field(
        STRICT_BOOL,
        "also write Namespaces, ServiceAccounts, Services and Deployments (the scaffold); "
        "false keeps only the policies, for Deployments you already have", default=True)


_DNS_NAME = r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?"


def _domain(v: str) -> str:
    if not compiled(_DNS_NAME).fullmatch(v):
        raise ValueError(f"{v[:60]!r} is not a DNS name")
    return v


class Mesh(Record):
    """The `[mesh]` table: service-mesh mTLS and authorization (opt-in)."""

    kind: Literal["none", "istio", "linkerd"] = field(
        literal("none", "istio", "linkerd"), "service mesh to emit mTLS and authorization for",
        default="none")
    trust_domain: str = field(
        after(_domain, STR), "mesh trust domain of the workload identities",
        default="cluster.local")


_TLS_DIR = r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*"


def _dir(v: str) -> str:
    if not compiled(_TLS_DIR).fullmatch(v) or ".." in v.split("/"):
        raise ValueError(f"{v[:60]!r}: a relative folder inside the output folder")
    return v


class Tls(Record):
    """The `[tls]` table: where certificates live and how long they last."""

    # Inside k8s/ so that kustomize's default load restrictor lets the secretGenerator read
    # the files; compose.yaml points at the same folder, so there is one copy of each key.
    dir: str = field(after(_dir, STR), "folder of the TLS files, relative to the output folder",
                     default="k8s/certs")
    days: int = field(strict_int(1, 3650), "validity of leaf certificates, in days",
                      default=365)
    ca_days: int = field(strict_int(1, 36500), "validity of the private CA certificate, in days",
                         default=3650)


def _top_name(value: Any) -> Any:
    if isinstance(value, str) and not compiled(_TOP_NAME).fullmatch(value):
        raise ValueError(f"{value[:60]!r} is not a compose object name (letters, digits and "
                         "'_.-', starting with a letter or digit, at most 63 characters)")
    return value


def _names(v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    for name, body in v.items():
        problem = passthrough_problem(body)
        if problem:
            raise ValueError(f"{name}: {problem}")
    return v


# validated per key, so that an error names (and points at the line of) the bad name
TOP_OBJECTS: Type = after(_names, dict_of(before(_top_name, STR), TABLE))


class ComposeTop(Record):
    """The `[compose]` table: top-level compose objects services refer to (named volumes,
    configs, secrets), passed through as written; castle owns networks."""

    volumes: dict[str, dict[str, Any]] = field(
        TOP_OBJECTS, "top-level named volumes, as compose writes them", factory=dict)
    configs: dict[str, dict[str, Any]] = field(
        TOP_OBJECTS, "top-level configs, as compose writes them", factory=dict)
    secrets: dict[str, dict[str, Any]] = field(
        TOP_OBJECTS,
        "top-level secrets services mount, as compose writes them (file paths relative to the "
        "spec's folder); castle adds its own TLS secrets beside them", factory=dict)


def _version(v: Any) -> Any:
    if type(v) is not int:  # TOML true or 1.0 must not pass as 1
        raise ValueError(f"unsupported format version {v!r}; this castle reads version = 1")
    return v


def _tiers(v: list[Tier]) -> list[Tier]:
    if not v:
        raise ValueError("needs at least one [[tiers]] entry (outermost first)")
    return v


class Spec(Record):
    """A whole zones.toml."""

    version: Literal[1] = field(before(_version, literal(1)), "format version of zones.toml (1)")
    stack: Stack = field(record(Stack), "the stack: name and address pool")
    tiers: list[Tier] = field(after(_tiers, list_of(record(Tier))),
                              "the walls, outermost first")
    services: dict[str, Service] = field(
        dict_of(STR, record(Service)), "the containers, by name", factory=dict)
    flows: list[Flow] = field(list_of(record(Flow)), "the connections allowed", factory=list)
    firewall: Firewall = field(record(Firewall), "host firewall settings",
                               factory=Firewall.default)
    kubernetes: Kubernetes = field(record(Kubernetes), "Kubernetes settings",
                                   factory=Kubernetes.default)
    mesh: Mesh = field(record(Mesh), "service-mesh settings", factory=Mesh.default)
    tls: Tls = field(record(Tls), "certificate settings", factory=Tls.default)
    compose: ComposeTop = field(record(ComposeTop),
                                "top-level compose objects (named volumes, configs)",
                                factory=ComposeTop.default)

    @property
    def namespace(self) -> str:
        """The Kubernetes namespace: configured, or the stack name."""
        return self.kubernetes.namespace or self.stack.name
