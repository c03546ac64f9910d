"""Which TLS files each service mounts, which names its certificates carry, who may connect."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

from castle.plan import Plan
from castle.spec.model import TLS_REF

CA_SECRET = "castle-ca"
CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
# Kubernetes' default cluster DNS domain; the SANs carry it so a pod can dial the full name.
CLUSTER_DOMAIN = "cluster.local"

Role = Literal["server", "client"]


class Mount(NamedTuple):
    """A compose secret mounted in a service at /run/secrets/<target>."""

    source: str
    target: str


class Leaf(NamedTuple):
    """One certificate castle issues: a service's server or client identity."""

    service: str
    role: Role
    names: tuple[str, ...]  # DNS SANs; the first is the compose service name

    @property
    def cert_file(self) -> str:
        """File name of the certificate inside the TLS folder."""
        return f"{self.service}-{self.role}.crt"

    @property
    def key_file(self) -> str:
        """File name of the private key inside the TLS folder."""
        return f"{self.service}-{self.role}.key"


def namespace_of(plan: Plan, service: str) -> str:
    """The Kubernetes namespace a service runs in."""
    return plan.namespace_of(service)


def dns_names(plan: Plan, service: str) -> tuple[str, ...]:
    """The SANs of a service's certificates: compose name, then the Kubernetes DNS names
    (`svc.NS` is what a pod in another namespace dials with the default search path)."""
    ns = namespace_of(plan, service)
    return (service, f"{service}.{ns}", f"{service}.{ns}.svc",
            f"{service}.{ns}.svc.{CLUSTER_DOMAIN}")


def leaves(plan: Plan) -> list[Leaf]:
    """The certificates tls flows need: a server one per destination, a client one per source."""
    wanted: set[tuple[str, Role]] = set()
    for client, server in plan.tls_pairs:
        wanted.add((server, "server"))
        wanted.add((client, "client"))
    return [Leaf(svc, role, dns_names(plan, svc)) for svc, role in sorted(wanted)]


def allowed_clients(plan: Plan, server: str) -> tuple[str, ...]:
    """The services whose client certificate `server` must accept: the sources of its tls flows.

    castle's one CA signs every service, so a valid chain only proves "a service of this
    stack"; the server (or the mesh) must also check that the peer's name is in this list.
    """
    return tuple(sorted({c for c, s in plan.tls_pairs if s == server}))


def peer_allowed(plan: Plan, server: str, peer_names: Sequence[str]) -> bool:
    """True when a verified peer certificate's DNS names identify an allowed client of `server`."""
    allowed = set(allowed_clients(plan, server))
    return any(name in allowed for name in peer_names)


def secret_files(plan: Plan) -> dict[str, str]:
    """Top-level compose secret name -> file name inside the TLS folder."""
    files: dict[str, str] = {}
    for leaf in leaves(plan):
        files[CA_SECRET] = CA_CERT_FILE
        files[f"{leaf.service}-{leaf.role}-cert"] = leaf.cert_file
        files[f"{leaf.service}-{leaf.role}-key"] = leaf.key_file
    return dict(sorted(files.items()))


def mounts(plan: Plan, service: str) -> list[Mount]:
    """The secrets a service mounts: its server pair, a client pair per TLS destination, the CA."""
    found: set[Mount] = set()
    for client, server in plan.tls_pairs:
        if server == service:
            found |= {Mount(f"{service}-server-cert", f"{service}-server-cert"),
                      Mount(f"{service}-server-key", f"{service}-server-key"),
                      Mount(CA_SECRET, CA_SECRET)}
        if client == service:
            found |= {Mount(f"{service}-client-cert", f"{server}-client-cert"),
                      Mount(f"{service}-client-key", f"{server}-client-key"),
                      Mount(CA_SECRET, CA_SECRET)}
    return sorted(found)


def _env_name(service: str) -> str:
    return service.upper().replace("-", "_")


def default_env(plan: Plan, service: str) -> dict[str, str]:
    """The documented wiring when a service declares no tls_env.

    A server gets TLS_CERT_FILE, TLS_KEY_FILE and TLS_CA_FILE; a client gets
    <DEST>_TLS_CERT_FILE, <DEST>_TLS_KEY_FILE and <DEST>_TLS_CA_FILE per tls destination
    (DEST upper-cased, '-' -> '_').
    """
    env: dict[str, str] = {}
    for client, server in plan.tls_pairs:
        if server == service:
            env |= {"TLS_CERT_FILE": "server_cert", "TLS_KEY_FILE": "server_key",
                    "TLS_CA_FILE": "ca"}
        if client == service:
            name = _env_name(server)
            env |= {f"{name}_TLS_CERT_FILE": f"client_cert:{server}",
                    f"{name}_TLS_KEY_FILE": f"client_key:{server}",
                    f"{name}_TLS_CA_FILE": "ca"}
    return env


def resolve(service: str, ref: str) -> str:
    """The value of one tls_env entry: a /run/secrets path, or the literal after '='.

    A literal means what it says: `$` is doubled so compose does not interpolate it."""
    if ref.startswith("="):
        return ref[1:].replace("$", "$$")
    m = TLS_REF.fullmatch(ref)
    if not m:
        raise ValueError(ref)
    if ref == "ca":
        return f"/run/secrets/{CA_SECRET}"
    if ref in ("server_cert", "server_key"):
        return f"/run/secrets/{service}-server-{ref.split('_')[1]}"
    kind, dest = m.group(1), m.group(2)
    return f"/run/secrets/{dest}-client-{kind.split('_')[1]}"


def environment(plan: Plan, service: str) -> dict[str, str]:
    """Environment variables that point a service at its TLS files."""
    if not any(service in pair for pair in plan.tls_pairs):
        return {}
    wiring = plan.service(service).spec.tls_env or default_env(plan, service)
    return {key: resolve(service, ref) for key, ref in sorted(wiring.items())}
