"""Pydantic models of zones.toml (format version 1): shape and per-field checks only."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
)

from castle.spec.addresses import UNUSABLE_POOLS, Address
from castle.spec.pools import default_pool
from castle.spec.values import (
    OWNED_HINTS,
    Endpoints,
    Label,
    PortList,
    PortRange,
    PublishList,
    Text,
    _text,
    check_labels,
    image_problem,
    passthrough_problem,
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
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
TLS_REF = re.compile(r"ca|server_cert|server_key|(client_cert|client_key):([a-z0-9-]{1,63})")
_TOP_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")


_HOST_ALIAS = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,252}[A-Za-z0-9])?$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Stack(_Model):
    """The `[stack]` table: project name and address pool."""

    name: Label = Field(
        description="compose project name and default Kubernetes namespace (DNS-1123 label)"
    )
    subnet_pool: ipaddress.IPv4Network | None = Field(
        default=None,
        description="IPv4 pool the compose networks' subnets are allocated from (default: "
        "a /16 in 10.128.0.0/9 chosen from the stack name, so stacks on one host differ)",
    )
    description: Text = Field(default="", description="free text, carried into generated headers")
    targets: list[Literal["compose", "iptables", "nftables", "k8s", "mesh"]] | None = Field(
        default=None,
        description="targets to emit (default: all; mesh only when [mesh] kind is set)",
    )


    @field_validator("subnet_pool")
    @classmethod
    def _pool(cls, v: ipaddress.IPv4Network | None) -> ipaddress.IPv4Network | None:
        if v is None:
            return v
        for bad, why in UNUSABLE_POOLS:
            if v.overlaps(bad):
                raise ValueError(f"{v} overlaps {bad} ({why}); use private space such as "
                                 "10.89.0.0/16")
        return v


    @property
    def pool(self) -> ipaddress.IPv4Network:
        """The pool in use: subnet_pool, or the stack's own default."""
        return self.subnet_pool or default_pool(self.name)


class Tier(_Model):
    """One wall; order in the file is depth (outermost first)."""

    name: Label = Field(
        description="tier name (DNS-1123 label); position in [[tiers]] is depth, outermost first"
    )
    description: Text = Field(default="", description="free text")


class ServiceTls(_Model):
    """The `[services.NAME.tls]` table: how castle wires TLS into this service."""

    recipe: Literal["auto", "postgres", "mysql", "mariadb", "redis", "valkey", "nginx",
                    "generic"] = Field(
        default="auto",
        description="server recipe: the flags, config files and environment this server needs "
        "for mutual TLS (see docs/tls.md); auto picks it from the image name (postgres, mysql, "
        "mariadb, redis, valkey, nginx), anything else is generic (TLS_*_FILE variables)",
    )


Recipe = Literal["postgres", "mysql", "mariadb", "redis", "valkey", "nginx", "generic"]
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


class Service(_Model):
    """A container of the stack and what castle needs to wall it."""

    tier: Label = Field(description="the tier (wall) this service sits in")
    image: str = Field(description="container image reference")
    listen: PortList = Field(
        description='container ports: 80 (tcp), "53/udp", "8000-8010/tcp"', default_factory=list
    )
    publish: PublishList = Field(
        description="host:container renames of ports that flows from outside publish",
        default_factory=list,
    )
    description: Text = Field(
        default="", description="free text, carried into artifacts as comments"
    )
    labels: dict[str, str] | None = Field(
        default=None,
        description="Kubernetes pod labels that select it (default app.kubernetes.io/name)",
    )
    service_account: Label | None = Field(
        default=None, description="Kubernetes service account, the mesh identity (default: name)"
    )
    tls_env: dict[str, str] = Field(
        description="env var -> ca | server_cert | server_key | client_cert:DEST | "
        "client_key:DEST | =literal",
        default_factory=dict,
    )
    tls: ServiceTls | None = Field(
        default=None, description="TLS wiring of this service: the server recipe (optional)"
    )
    container_firewall: StrictBool = Field(
        default=False,
        description="also emit an in-container firewall script (needs NET_ADMIN; discouraged)",
    )
    compose: dict[str, Any] = Field(
        description="extra compose keys passed through (castle owns networks, ports, secrets)",
        default_factory=dict,
    )

    aliases: list[str] = Field(
        default_factory=list,
        description="other host names the service answers to on each of its networks "
        "(compose network aliases), e.g. its name before `castle import` renamed it",
    )
    secrets: list[str | dict[str, Any]] = Field(
        default_factory=list,
        description="compose secrets the service mounts (names or long-syntax tables, as "
        "compose writes them), declared under [compose.secrets]; castle adds its TLS ones",
    )
    address: Address | None = Field(default=None, description="an IPv4 address it keeps (others "
                                    "name it): its network with the most callers gets a "
                                    "subnet around it; default: one from subnet_pool")

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        problem = image_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, v: list[str]) -> list[str]:
        for alias in v:
            if not _HOST_ALIAS.match(alias):
                raise ValueError(f"{alias[:60]!r} is not a host name")
        return v

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, v: list[str | dict[str, Any]]) -> list[str | dict[str, Any]]:
        for item in v:
            source = item if isinstance(item, str) else item.get("source")
            if not isinstance(source, str) or not _TOP_NAME.match(source):
                raise ValueError(f"{str(source)[:60]!r} is not a secret name (a string, or a "
                                 "table with `source`)")
            problem = passthrough_problem(item)
            if problem:
                raise ValueError(problem)
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        check_labels(v or {})
        if v is not None and not v:
            raise ValueError("labels may not be empty: pods could not be selected")
        return v

    @field_validator("tls_env")
    @classmethod
    def _tls_env(cls, v: dict[str, str]) -> dict[str, str]:
        for key, val in v.items():
            if not _ENV_NAME.match(key):
                raise ValueError(f"{key[:60]!r} is not an environment variable name")
            _text(val)
            if not (val.startswith("=") or TLS_REF.fullmatch(val)):
                raise ValueError(
                    f"{key}: {val[:60]!r} is not a TLS file reference (ca, server_cert, "
                    'server_key, client_cert:DEST, client_key:DEST) or an "=literal" value'
                )
        return v

    @field_validator("compose")
    @classmethod
    def _compose(cls, v: dict[str, Any]) -> dict[str, Any]:
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


class Flow(_Model):
    """An allowed, directed connection: `from` opens connections to `to`."""

    from_: Endpoints = Field(
        description="who opens connections: a service, tier:NAME, internet, "
        "cidr:A.B.C.D/N, or a list",
        alias="from",
    )
    to: Endpoints = Field(
        description="who accepts them: a service, tier:NAME, internet, cidr:A.B.C.D/N, or a list"
    )
    ports: PortList | None = Field(
        default=None,
        description="ports allowed (default: each destination's own listen ports); "
        "required for egress",
    )
    tls: StrictBool = Field(
        default=False, description="mutual TLS on this flow: certificates and secrets for both ends"
    )
    description: Text = Field(
        default="", description="free text, carried into artifacts as comments and annotations"
    )
    waiver: Text = Field(
        default="", description="why this flow may break a wall rule; carried into the artifacts"
    )

    @field_validator("from_", "to")
    @classmethod
    def _nonempty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("needs at least one endpoint")
        return v

    @field_validator("ports")
    @classmethod
    def _ports_nonempty(cls, v: list[PortRange] | None) -> list[PortRange] | None:
        if v is not None and not v:
            raise ValueError("an empty port list allows nothing; leave `ports` out for all")
        return v


_LOG_RATE = re.compile(r"^[1-9][0-9]{0,5}/(second|minute|hour|day)$")


class Firewall(_Model):
    """The `[firewall]` table: host firewall settings."""

    ssh_port: StrictInt = Field(
        description="host SSH port the INPUT rules always keep open", default=22, ge=1, le=65535
    )
    ssh_sources: list[ipaddress.IPv4Network] = Field(
        description="IPv4 sources allowed to reach SSH on the host; when they narrow it, "
        "SSH over IPv6 is closed, and compose subnets are allocated around any of them that "
        "lies inside subnet_pool",
        default_factory=lambda: [ipaddress.IPv4Network("0.0.0.0/0")],
    )
    manage_input: StrictBool = Field(
        default=True,
        description="also guard the host's INPUT chain (containers may not reach the host)",
    )
    log_drops: StrictBool = Field(
        default=False,
        description="log dropped connection attempts to and from the stack's services, "
        "rate-limited, prefixed 'castle/<stack>/<service> ' (egress: '.../<service>/out '); "
        "see docs/persistence-and-logging.md",
    )
    log_rate: str = Field(
        default="10/minute",
        json_schema_extra={"pattern": _LOG_RATE.pattern},
        description="most log lines per service and direction, as N/second|minute|hour|day "
        "(bursts of 5 pass first)",
    )
    log_group: StrictInt | None = Field(
        default=None, ge=0, le=65535,
        description="send the lines to NFLOG group N (ulogd2, tcpdump -i nflog:N) instead "
        "of the kernel log (journalctl -k, dmesg)",
    )

    @field_validator("log_rate")
    @classmethod
    def _log_rate(cls, v: str) -> str:
        if not _LOG_RATE.match(v):
            raise ValueError(f"{v!r} is not a rate: write N/second, N/minute, N/hour or N/day "
                             "(e.g. \"10/minute\")")
        return v


class Kubernetes(_Model):
    """The `[kubernetes]` table: namespace and how internet traffic enters and leaves."""

    namespace: Label | None = Field(
        default=None, description="namespace of the policies (default: the stack name)"
    )
    ingress_namespace: Label | None = Field(
        default=None,
        description="internet ingress comes from this namespace (an ingress controller) "
        "instead of ipBlock",
    )
    ingress_pod_labels: dict[str, str] = Field(
        description="pod labels of the ingress controller in ingress_namespace",
        default_factory=dict,
    )
    egress_except: list[ipaddress.IPv4Network] = Field(
        description="ranges that 'internet' egress never reaches, in the Kubernetes ipBlocks "
        "and the host firewall alike (default: 10/8, 172.16/12, 192.168/16, 169.254/16); "
        "169.254.169.254 (cloud metadata) is always excluded unless a flow names it",
        default_factory=lambda: [ipaddress.IPv4Network(r) for r in NOT_INTERNET],
    )
    tier_namespaces: StrictBool = Field(
        default=False, description="one namespace per tier (<namespace>-<tier>)"
    )
    dns_namespace: Label = Field(
        default="kube-system", description="namespace of the cluster DNS pods kept reachable"
    )
    dns_pod_labels: dict[str, str] = Field(
        description="labels of the cluster DNS pods",
        default_factory=lambda: {"k8s-app": "kube-dns"},
    )

    ingress_service_account: Label | None = Field(
        default=None,
        description="service account of the ingress controller's pods in ingress_namespace: "
        "the one mesh identity allowed in from outside (required with a mesh and "
        "ingress_pod_labels)",
    )
    workloads: StrictBool = Field(
        default=True,
        description="also write Namespaces, ServiceAccounts, Services and Deployments (the "
        "scaffold); false keeps only the policies, for Deployments you already have",
    )

    @field_validator("ingress_pod_labels", "dns_pod_labels")
    @classmethod
    def _pod_labels(cls, v: dict[str, str]) -> dict[str, str]:
        return check_labels(v)


class Mesh(_Model):
    """The `[mesh]` table: service-mesh mTLS and authorization (opt-in)."""

    kind: Literal["none", "istio", "linkerd"] = Field(
        default="none", description="service mesh to emit mTLS and authorization for"
    )
    trust_domain: str = Field(
        default="cluster.local", description="mesh trust domain of the workload identities"
    )

    @field_validator("trust_domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?", v):
            raise ValueError(f"{v[:60]!r} is not a DNS name")
        return v


class Tls(_Model):
    """The `[tls]` table: where certificates live and how long they last."""

    # Inside k8s/ so that kustomize's default load restrictor lets the secretGenerator read
    # the files; compose.yaml points at the same folder, so there is one copy of each key.
    dir: str = Field(
        default="k8s/certs", description="folder of the TLS files, relative to the output folder"
    )
    days: StrictInt = Field(
        description="validity of leaf certificates, in days", default=365, ge=1, le=3650
    )
    ca_days: StrictInt = Field(
        description="validity of the private CA certificate, in days", default=3650, ge=1, le=36500
    )

    @field_validator("dir")
    @classmethod
    def _dir(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*", v) or ".." in v.split("/"):
            raise ValueError(f"{v[:60]!r}: a relative folder inside the output folder")
        return v


_TOP_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")


def _top_name(value: Any) -> Any:
    if isinstance(value, str) and not _TOP_NAME.match(value):
        raise ValueError(f"{value[:60]!r} is not a compose object name (letters, digits and "
                         "'_.-', starting with a letter or digit, at most 63 characters)")
    return value


# validated per key, so that an error names (and points at the line of) the bad name
TopName = Annotated[str, BeforeValidator(_top_name)]


class ComposeTop(_Model):
    """The `[compose]` table: top-level compose objects services refer to (named volumes,
    configs, secrets), passed through as written; castle owns networks."""

    volumes: dict[TopName, dict[str, Any]] = Field(
        description="top-level named volumes, as compose writes them", default_factory=dict
    )
    configs: dict[TopName, dict[str, Any]] = Field(
        description="top-level configs, as compose writes them", default_factory=dict
    )
    secrets: dict[TopName, dict[str, Any]] = Field(
        description="top-level secrets services mount, as compose writes them (file paths "
        "relative to the spec's folder); castle adds its own TLS secrets beside them",
        default_factory=dict,
    )

    @field_validator("volumes", "configs", "secrets")
    @classmethod
    def _names(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, body in v.items():
            problem = passthrough_problem(body)
            if problem:
                raise ValueError(f"{name}: {problem}")
        return v


class Spec(_Model):
    """A whole zones.toml."""

    version: Literal[1] = Field(description="format version of zones.toml (1)")
    stack: Stack = Field(description="the stack: name and address pool")
    tiers: list[Tier] = Field(description="the walls, outermost first")
    services: dict[str, Service] = Field(
        description="the containers, by name", default_factory=dict
    )
    flows: list[Flow] = Field(description="the connections allowed", default_factory=list)
    firewall: Firewall = Field(description="host firewall settings", default_factory=Firewall)
    kubernetes: Kubernetes = Field(description="Kubernetes settings", default_factory=Kubernetes)
    mesh: Mesh = Field(description="service-mesh settings", default_factory=Mesh)
    tls: Tls = Field(description="certificate settings", default_factory=Tls)
    compose: ComposeTop = Field(
        description="top-level compose objects (named volumes, configs)", default_factory=ComposeTop
    )

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, v: Any) -> Any:
        if type(v) is not int:  # TOML true or 1.0 must not pass as 1
            raise ValueError(f"unsupported format version {v!r}; this castle reads version = 1")
        return v

    @field_validator("tiers")
    @classmethod
    def _tiers(cls, v: list[Tier]) -> list[Tier]:
        if not v:
            raise ValueError("needs at least one [[tiers]] entry (outermost first)")
        return v

    @property
    def namespace(self) -> str:
        """The Kubernetes namespace: configured, or the stack name."""
        return self.kubernetes.namespace or self.stack.name
