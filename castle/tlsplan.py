"""Which TLS files each service mounts and which environment variables point at them."""

from __future__ import annotations

from dataclasses import dataclass

from castle.model import TLS_REF
from castle.plan import Plan

CA_SECRET = "castle-ca"


@dataclass(frozen=True, order=True)
class Mount:
    """A compose secret mounted in a service at /run/secrets/<target>."""

    source: str
    target: str


def secret_files(plan: Plan) -> dict[str, str]:
    """Top-level compose secret name -> file name inside the TLS folder."""
    files: dict[str, str] = {}
    for client, server in plan.tls_pairs:
        files[CA_SECRET] = "ca.crt"
        files[f"{server}-server-cert"] = f"{server}-server.crt"
        files[f"{server}-server-key"] = f"{server}-server.key"
        files[f"{client}-client-cert"] = f"{client}-client.crt"
        files[f"{client}-client-key"] = f"{client}-client.key"
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
    """The documented wiring when a service declares no tls_env."""
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
    """The value of one tls_env entry: a /run/secrets path, or the literal after '='."""
    if ref.startswith("="):
        return ref[1:]
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
