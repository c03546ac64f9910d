"""The Kubernetes scaffold: Namespaces, ServiceAccounts, Services and Deployments behind the walls.

Every Deployment carries exactly the labels the NetworkPolicies and mesh policies select,
runs as the service account the mesh authorizes, declares a containerPort per listen port,
and mounts the TLS Secrets of the kustomization at the very paths compose uses
(/run/secrets/<name>), with the same variables, command flags and config files
(castle.tls.recipes.service_tls, which compose.yaml reads too). `[kubernetes] workloads =
false` leaves all of this out and keeps only the policies.
"""

from __future__ import annotations

import re
import shlex
from typing import Any, NamedTuple

from castle.io.render import environment, render, yaml_pairs, yaml_scalar
from castle.io.write import Output, header
from castle.plan import Plan, PlanService
from castle.spec.values import MAX_DECLARED_PORTS, listen_count
from castle.targets.k8s_names import (
    MANAGED,
    NAMESPACES,
    WORKLOADS,
    mesh_kind,
    namespace_of,
    secret_item,
    used_namespaces,
)
from castle.tls import recipes as tls_recipes

TLS_VOLUME = "castle-tls"
LINKERD_POD = (("config.linkerd.io/default-inbound-policy", "deny"),
               ("linkerd.io/inject", "enabled"))
ISTIO_NAMESPACE = (("istio-injection", "enabled"),)
_INTERPOLATION = re.compile(r"\$(?!\$)")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")  # what the API server accepts
_DNS_1035 = re.compile(r"^[a-z]([a-z0-9-]*[a-z0-9])?$")


PARTS = "workloads-parts.yaml.j2"
Labels = list[tuple[str, str]]


class Port(NamedTuple):
    """One containerPort and Service port."""

    name: str
    proto: str  # TCP | UDP
    number: int


class Workload(NamedTuple):
    """One service's ServiceAccount, Service and Deployment, ready for the template: every
    value from the spec already YAML-quoted, except the raw texts the template comments on."""

    name: str  # as written, for comments
    qname: str
    namespace: str
    comment: str  # as written
    labels: Labels
    account: str
    image: str
    service: bool  # a Service is written (the name is a DNS-1035 label and ports exist)
    service_ports: str  # the Service's `ports:` items ("" when it has none)
    container_ports: str  # the container's `ports:` items ("" when it has none)
    undeclared: int  # listen ports too many to declare
    config_map: str  # the ConfigMap of the TLS recipe's files
    configs: Labels  # ConfigMap key -> text
    annotations: Labels
    run_user: str  # "" when not numeric
    run_group: str
    fs_group: str
    command: list[str] | None
    args: list[str] | None
    working_dir: str
    skipped_env: list[str]  # as written, for a comment
    env: Labels
    mounts: Labels  # (mountPath, subPath)
    mode: int
    # projected volume sources: (secret, [(key, path)]), one per Secret
    sources: list[tuple[str, Labels]]


def _quoted_int(value: int | None) -> str:
    return "" if value is None else yaml_scalar(value)


class _Shared:
    """What every workload of a plan shares: the text of each distinct port list, rendered
    once through the parts macros, and the pods' annotations."""

    def __init__(self, plan: Plan) -> None:
        self.parts: Any = environment().get_template(PARTS).module
        self.known: dict[tuple[Port, ...], tuple[str, str]] = {}
        self.annotations = yaml_pairs(LINKERD_POD) if mesh_kind(plan) == "linkerd" else []

    def texts(self, ports: list[Port]) -> tuple[str, str]:
        """The Service's and the container's `ports:` items."""
        key = tuple(ports)
        texts = self.known.get(key)
        if texts is None:
            texts = self.known[key] = ((str(self.parts.service_ports(key)),
                                        str(self.parts.container_ports(key)))
                                       if key else ("", ""))
        return texts


def k8s_text(value: Any) -> str | None:
    """A compose passthrough value as Kubernetes reads it, or None when compose would
    interpolate it (`$VAR`, `${VAR}`: the value exists only on the compose host).

    Both read `$$` as one `$`, so a value without interpolation carries over unchanged."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return None if _INTERPOLATION.search(text.replace("$$", "")) else text


def _environment(plan: Plan, svc: PlanService) -> tuple[list[tuple[str, str]], list[str]]:
    """Passthrough environment that means the same on Kubernetes, then the TLS wiring."""
    env = svc.spec.compose.get("environment")
    pairs: list[tuple[str, Any]] = []
    if isinstance(env, dict):
        pairs = list(env.items())
    elif isinstance(env, list):
        pairs = [tuple(item.split("=", 1)) if "=" in item else (item, None) for item in env]
    out: list[tuple[str, str]] = []
    skipped: list[str] = []
    for key, value in pairs:
        text = None if value is None else k8s_text(value)
        if text is None or not _ENV_NAME.match(key):
            skipped.append(key)  # taken from the compose host's environment: not known here
        else:
            out.append((key, text))
    # the recipe's variables, as compose gets them; Kubernetes also reads `$$` as `$`
    wiring = tls_recipes.service_tls(plan, svc.name)
    out += [(k, v.replace("$", "$$")) for k, v in (wiring.env if wiring else {}).items()]
    return out, skipped


def _words(value: Any) -> list[str] | None:
    """A compose command or entrypoint (string or list) as Kubernetes words, or None."""
    if value is None:
        return None
    try:
        words = shlex.split(value) if isinstance(value, str) else [str(v) for v in value]
    except ValueError:
        return None
    texts = [k8s_text(w) for w in words]
    return None if any(t is None for t in texts) else [t for t in texts if t is not None]


def _user(value: Any) -> tuple[int | None, int | None]:
    """(uid, gid) of a numeric compose `user` ("999", "999:999"); None where not numeric."""
    uid, _, gid = str(value or "").partition(":")
    return (int(uid) if uid.isdigit() else None, int(gid) if gid.isdigit() else None)


def _ports(svc: PlanService) -> list[Port]:
    """One Port per listen port; none past MAX_DECLARED_PORTS (castle validate warns)."""
    if listen_count(svc.spec.listen) > MAX_DECLARED_PORTS:
        return []
    seen: dict[tuple[str, int], Port] = {}
    for p in svc.spec.listen:
        for n in range(p.lo, p.hi + 1):
            seen.setdefault((p.proto, n), Port(f"{p.proto}-{n}", p.proto.upper(), n))
    return [seen[k] for k in sorted(seen)]


def _sources(items: list[tuple[str, str, str]]) -> list[tuple[str, list[tuple[str, str]]]]:
    by_secret: dict[str, list[tuple[str, str]]] = {}
    for secret, key, path in items:
        by_secret.setdefault(secret, []).append((key, path))
    return [(secret, sorted(by_secret[secret], key=lambda kp: kp[1]))
            for secret in sorted(by_secret)]


def workload(plan: Plan, svc: PlanService, shared: _Shared | None = None) -> Workload:
    """Everything the templates write about one service."""
    ports = _ports(svc)
    env, skipped = _environment(plan, svc)
    compose = svc.spec.compose
    run_as = _user(compose.get("user"))
    mounts: list[tuple[str, str]] = []
    items: list[tuple[str, str, str]] = []
    configs: list[tuple[str, str]] = []
    wiring = tls_recipes.service_tls(plan, svc.name)
    args = _words(compose.get("command"))
    group = run_as[1] if run_as[1] is not None else run_as[0]
    if wiring is not None:
        for m in wiring.secrets:
            secret, key = secret_item(m.source)
            # one projected volume, one file per subPath: the path the server reads
            path = m.target.rsplit("/", 1)[1]
            mounts.append((m.target, path))
            items.append((secret, key, path))
        # compose's entrypoint only copies keys into place; fsGroup does that here
        skip = wiring.entrypoint[-1] if wiring.entrypoint else ""
        for cfg in wiring.configs:
            if cfg.target != skip:
                mounts.append((cfg.target, cfg.name))
                configs.append((cfg.name, cfg.text))
        if wiring.command is not None:
            args = [c.replace("$", "$$") for c in wiring.command]
        if group is None and wiring.owner is not None:
            group = wiring.owner.gid
    if run_as[0] == 0 and run_as[1] in (None, 0):
        group = None  # root reads anything
    command = _words(compose.get("entrypoint"))
    working_dir = k8s_text(compose.get("working_dir") or "") or ""
    shared = shared or _Shared(plan)
    service_ports, container_ports = shared.texts(ports)
    q = yaml_scalar
    return Workload(
        name=svc.name,
        qname=q(svc.name),
        namespace=q(namespace_of(plan, svc.name)),
        comment=svc.spec.description,
        labels=yaml_pairs(svc.labels),
        account=q(svc.service_account),
        image=q(svc.image),
        service=bool(ports) and bool(_DNS_1035.match(svc.name)),
        service_ports=service_ports,
        container_ports=container_ports,
        undeclared=0 if ports else listen_count(svc.spec.listen),
        config_map=q(svc.name + "-castle-tls"),
        configs=yaml_pairs(sorted(configs)) if configs else [],
        annotations=shared.annotations,
        run_user=_quoted_int(run_as[0]),
        run_group=_quoted_int(run_as[1]),
        fs_group=_quoted_int(group if mounts else None),
        command=None if command is None else [q(w) for w in command],
        args=None if args is None else [q(w) for w in args],
        working_dir=q(working_dir) if working_dir else "",
        skipped_env=skipped,
        env=yaml_pairs(env) if env else [],
        mounts=yaml_pairs(sorted(mounts)) if mounts else [],
        # without a known group the container's unknown user must still read its own key
        mode=0o440 if group is not None or run_as[0] == 0 else 0o444,
        sources=[(q(secret), yaml_pairs(kps)) for secret, kps in _sources(items)] if items else [],
    )


def namespace_objects(plan: Plan) -> list[dict[str, Any]]:
    """The stack's namespaces with the mesh's injection label or annotations."""
    kind = mesh_kind(plan)
    return [{
        "name": ns,
        "labels": [MANAGED, *(ISTIO_NAMESPACE if kind == "istio" else ())],
        "annotations": list(LINKERD_POD) if kind == "linkerd" else [],
    } for ns in used_namespaces(plan)]


def service_accounts(plan: Plan) -> list[tuple[str, str]]:
    """(namespace, service account) of every service: the identities the mesh checks."""
    return sorted({(namespace_of(plan, s.name), s.service_account) for s in plan.services})


def outputs(plan: Plan) -> list[Output]:
    """namespaces.yaml and workloads.yaml."""
    head = header(plan.source_name, plan.sha256)
    namespaces = render("namespaces.yaml.j2", header=head, namespaces=namespace_objects(plan),
                        mesh=mesh_kind(plan))
    shared = _Shared(plan)
    accounts = [(yaml_scalar(ns), yaml_scalar(sa)) for ns, sa in service_accounts(plan)]
    loads = render("workloads.yaml.j2", header=head,
                   managed=f"{yaml_scalar(MANAGED[0])}: {yaml_scalar(MANAGED[1])}",
                   accounts=accounts,
                   volume=yaml_scalar(TLS_VOLUME),
                   workloads=[workload(plan, s, shared) for s in plan.services])
    return [Output(NAMESPACES, namespaces), Output(WORKLOADS, loads)]
