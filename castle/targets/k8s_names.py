"""Names the Kubernetes outputs share: file names, labels, namespaces, Secret items, the mesh."""

from __future__ import annotations

from castle.errors import UsageError
from castle.plan import Plan, select_targets
from castle.tls import plan as tlsplan
from castle.tls import recipes as tls_recipes

MESH = "k8s/mesh.yaml"
NAMESPACES = "k8s/namespaces.yaml"  # written by castle.targets.workloads
WORKLOADS = "k8s/workloads.yaml"
NS_LABEL = "kubernetes.io/metadata.name"
MANAGED = ("app.kubernetes.io/managed-by", "castle")
EVERYWHERE = "0.0.0.0/0"


def namespaces_by_tier(plan: Plan) -> dict[str, str]:
    """tier -> namespace; each must be a DNS label (the wall rules reject longer ones)."""
    out = plan.tier_namespaces
    for t, ns in out.items():
        if len(ns) > 63:
            raise UsageError(
                f"Kubernetes namespace {ns!r} for tier {t!r} is longer than 63 characters; "
                "set a shorter [kubernetes].namespace"
            )
    return out


def namespace_of(plan: Plan, service: str) -> str:
    """The namespace a service's pods run in."""
    return plan.namespace_of(service)


def used_namespaces(plan: Plan) -> list[str]:
    """The namespaces that hold at least one service, sorted."""
    tiers = namespaces_by_tier(plan)
    return sorted({tiers[s.tier] for s in plan.services})


def secret_item(name: str) -> tuple[str, str]:
    """The Kubernetes Secret and key that hold one compose secret (tlsplan.secret_files name):
    `db-server-cert` -> (`db-server-tls`, `tls.crt`), `castle-ca` -> (`castle-ca`, `ca.crt`)."""
    if name == tlsplan.CA_SECRET:
        return tlsplan.CA_SECRET, "ca.crt"
    if name.endswith(tls_recipes.PASSWORD_SUFFIX):  # a generated password: Opaque, one key
        return name, "password"
    base, _, part = name.rpartition("-")
    return f"{base}-tls", {"cert": "tls.crt", "key": "tls.key"}[part]


def mesh_kind(plan: Plan) -> str:
    """The mesh the spec emits ("none" unless [mesh] kind is set and mesh is a target).

    From the spec, not from this run's --target: `--target k8s --check` must not drift."""
    if "mesh" in select_targets(plan.spec, None):
        return plan.spec.mesh.kind
    return "none"
