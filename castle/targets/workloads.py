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

from castle.io.render import environment, render, yaml_pairs, yaml_scalar, yaml_strings
from castle.io.write import Output, header
from castle.plan import Plan, PlanService
from castle.spec.values import MAX_DECLARED_PORTS, listen_count
from castle.targets.k8s_names import (
    MANAGED,
    NAMESPACES,
    WORKLOADS,
    mesh_kind,
    namespaces_by_tier,
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


def quoted_labels(plan: Plan) -> dict[str, Labels]:
    """Each service's pod labels, quoted in one `yaml_strings` batch (once per plan: the
    policies and the Deployments select by them)."""
    known: dict[str, Labels] | None = plan.memo.get("k8s_labels")
    if known is None:
        quoted = yaml_strings([text for s in plan.services for pair in s.labels
                               for text in pair])
        known = plan.memo["k8s_labels"] = {}
        at = 0
        for s in plan.services:
            end = at + 2 * len(s.labels)
            known[s.name] = list(zip(quoted[at:end:2], quoted[at + 1:end:2], strict=True))
            at = end
    return known


class _Shared:
    """What every workload of a plan shares: the text of each distinct port list, rendered
    once through the parts macros, the pods' annotations, and each service's names quoted in
    one batch."""

    def __init__(self, plan: Plan) -> None:
        self.parts: Any = environment().get_template(PARTS).module
        # a listen list -> its Ports and their Service and container `ports:` items
        self.known: dict[tuple[tuple[str, int, int], ...], tuple[list[Port], str, str]] = {}
        self.annotations = yaml_pairs(LINKERD_POD) if mesh_kind(plan) == "linkerd" else []
        self.labels = quoted_labels(plan)
        self.namespaces = {t: yaml_scalar(ns) for t, ns in namespaces_by_tier(plan).items()}
        flat = yaml_strings([text for s in plan.services for text in (
            s.name, s.service_account, s.image, s.name + "-castle-tls")])
        # service -> (name, service account, image, ConfigMap), quoted
        self.names = {s.name: (flat[i], flat[i + 1], flat[i + 2], flat[i + 3])
                      for i, s in zip(range(0, len(flat), 4), plan.services, strict=True)}

    def ports(self, svc: PlanService) -> tuple[list[Port], str, str]:
        """The service's Ports, and the Service's and the container's `ports:` items."""
        key = tuple([(p.proto, p.lo, p.hi) for p in svc.spec.listen])
        found = self.known.get(key)
        if found is None:
            ports = _ports(svc)
            found = self.known[key] = (ports, str(self.parts.service_ports(ports)),
                                       str(self.parts.container_ports(ports))) \
                if ports else (ports, "", "")
        return found


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
        if text is None or not _ENV_NAME.fullmatch(key):
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


class _Run(NamedTuple):
    """How a service's container runs, from its compose keys and TLS wiring."""

    env: list[tuple[str, str]]
    skipped: list[str]
    run_as: tuple[int | None, int | None]
    group: int | None  # the files' group (fsGroup), None when not known or root
    command: list[str] | None
    args: list[str] | None
    working_dir: str
    mounts: list[tuple[str, str]]  # (mountPath, subPath)
    items: list[tuple[str, str, str]]  # (secret, key, path)
    configs: list[tuple[str, str]]  # (ConfigMap key, text)


def _run(plan: Plan, svc: PlanService, wiring: tls_recipes.ServiceTls | None) -> _Run:
    """The container's environment, user, command and TLS files."""
    env, skipped = _environment(plan, svc)
    compose = svc.spec.compose
    run_as = _user(compose.get("user"))
    mounts: list[tuple[str, str]] = []
    items: list[tuple[str, str, str]] = []
    configs: list[tuple[str, str]] = []
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
    return _Run(env, skipped, run_as, group, _words(compose.get("entrypoint")), args,
                k8s_text(compose.get("working_dir") or "") or "", mounts, items, configs)


# what _run finds in a service with no compose keys and no TLS (nothing is added to it)
_PLAIN = _Run([], [], (None, None), None, None, None, "", [], [], [])


def workload(plan: Plan, svc: PlanService, shared: _Shared | None = None) -> Workload:
    """Everything the templates write about one service."""
    shared = shared or _Shared(plan)
    ports, service_ports, container_ports = shared.ports(svc)
    wiring = tls_recipes.service_tls(plan, svc.name)
    run = _run(plan, svc, wiring) if svc.spec.compose or wiring is not None else _PLAIN
    env, skipped, run_as, group, command, args, working_dir, mounts, items, configs = run
    qname, account, image, config_map = shared.names[svc.name]
    q = yaml_scalar
    return Workload(
        name=svc.name,
        qname=qname,
        namespace=shared.namespaces[svc.tier],
        comment=svc.spec.description,
        labels=shared.labels[svc.name],
        account=account,
        image=image,
        service=bool(ports and _DNS_1035.fullmatch(svc.name)),
        service_ports=service_ports,
        container_ports=container_ports,
        undeclared=0 if ports else listen_count(svc.spec.listen),
        config_map=config_map,
        configs=yaml_pairs(sorted(configs)) if configs else [],
        annotations=shared.annotations,
        run_user="" if run_as[0] is None else q(run_as[0]),
        run_group="" if run_as[1] is None else q(run_as[1]),
        fs_group="" if group is None or not mounts else q(group),
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
    tiers = namespaces_by_tier(plan)
    return sorted({(tiers[s.tier], s.service_account) for s in plan.services})


def outputs(plan: Plan) -> list[Output]:
    """namespaces.yaml and workloads.yaml."""
    head = header(plan.source_name, plan.sha256)
    namespaces = render("namespaces.yaml.j2", header=head, namespaces=namespace_objects(plan),
                        mesh=mesh_kind(plan))
    shared = _Shared(plan)
    flat = yaml_strings([text for pair in service_accounts(plan) for text in pair])
    accounts = list(zip(flat[::2], flat[1::2], strict=True))
    loads = render("workloads.yaml.j2", header=head,
                   managed=f"{yaml_scalar(MANAGED[0])}: {yaml_scalar(MANAGED[1])}",
                   accounts=accounts,
                   volume=yaml_scalar(TLS_VOLUME),
                   workloads=[workload(plan, s, shared) for s in plan.services])
    return [Output(NAMESPACES, namespaces), Output(WORKLOADS, loads)]
