"""compose.yaml: services on the networks their flows need, published ports, TLS secrets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from castle.errors import CastleError
from castle.io.render import comment, render, yaml_block, yaml_scalar, yaml_strings
from castle.io.write import Output, header
from castle.plan import Plan, PlanService, Published
from castle.spec.findings import INTERNET
from castle.spec.values import span
from castle.targets import relocate
from castle.tls import recipes as tls_recipes

PATH = "compose.yaml"


def _environment(plan: Plan, svc: PlanService,
                 wiring: tls_recipes.ServiceTls | None) -> Any:
    """Passthrough environment with the TLS wiring added, in the form the user wrote."""
    tls_env = {k: v.replace("$", "$$") for k, v in wiring.env.items()} if wiring else {}
    env = svc.spec.compose.get("environment")
    if not tls_env:
        return env
    if isinstance(env, list):
        return [*env, *(f"{k}={v}" for k, v in tls_env.items())]
    return {**(env or {}), **tls_env}


def bind_ip(p: Published) -> str:
    """The host address a published port binds to, decided per port for IPv6.

    Docker's userland proxy listens on [::] for an unbound port and forwards IPv6 clients
    to the container from the gateway address, past every IPv4 rule. A port open to the
    internet may take that path (IPv6 clients are internet too); a port open only to
    IPv4 CIDRs is bound to 0.0.0.0 so that no IPv6 path exists.
    """
    if p.host_ip:
        return p.host_ip
    return "" if INTERNET in p.sources else "0.0.0.0"


def _port_entry(svc: PlanService, p: Published) -> str:
    """A `ports` entry with each side as the spec wrote it: a `${VAR:-VALUE}` stays for
    compose to fill (the firewalls wall VALUE); numbers otherwise, or when only part of the
    entry's range is published."""
    ip, host, cont = bind_ip(p), span(p.host.lo, p.host.hi), span(p.container.lo,
                                                                 p.container.hi)
    for e in svc.spec.publish:
        if (e.host_ip, e.host, e.container) == (p.host_ip, p.host, p.container):
            ip, host, cont = e.ip_text or ip, e.host_text or host, e.container_text or cont
            break
    return f"{ip + ':' if ip else ''}{host}:{cont}/{p.container.proto}"


@dataclass(frozen=True, slots=True)
class ServiceRow:
    """What the template writes about one service, every value already quoted: YAML
    scalars through `yaml_strings` (the `yq` filter's quoting), the description through
    `comment`, the passthrough keys as a `yblock` at indentation 4."""

    name: str
    description: str  # "" when the spec gives none
    image: str
    passthrough: str  # "" when no key is passed through
    expose: list[str]
    networks: list[tuple[str, str]]  # (network, address)
    aliases: list[str]
    ports: list[str]
    own_secrets: list[str]
    secrets: list[tuple[str, str]]  # (source, target)


def _passthrough(plan: Plan, svc: PlanService,
                 wiring: tls_recipes.ServiceTls | None) -> tuple[dict[str, Any], list[str]]:
    """The service's compose keys castle passes through (TLS wiring merged in), and its TLS
    secrets as (source, target) names flattened into one list."""
    passthrough = relocate.service_keys(
        {k: v for k, v in svc.spec.compose.items() if k != "environment"}, plan.spec_dir)
    env = _environment(plan, svc, wiring)
    if env is not None:
        passthrough["environment"] = env
    secrets: list[str] = []
    if wiring is not None:
        if wiring.command is not None:
            passthrough["command"] = [c.replace("$", "$$") for c in wiring.command]
        if wiring.entrypoint is not None:
            passthrough["entrypoint"] = list(wiring.entrypoint)
        if wiring.configs:
            passthrough["configs"] = [*(passthrough.get("configs") or []), *(
                {"source": c.name, "target": c.target} for c in wiring.configs)]
        staged = wiring.staged
        prefix = tls_recipes.SECRETS_DIR + "/"
        for m in wiring.secrets:
            target = staged.get(m.target, m.target)
            secrets += [m.source, target.removeprefix(prefix)]
    if svc.spec.container_firewall:
        caps = list(passthrough.get("cap_add") or [])
        passthrough["cap_add"] = sorted(set(caps) | {"NET_ADMIN"})
    return passthrough, secrets


def service_row(plan: Plan, svc: PlanService) -> ServiceRow:
    """What the template needs about one service, quoted."""
    passthrough, secrets = _passthrough(plan, svc, tls_recipes.service_tls(plan, svc.name))
    networks = plan.address_text[svc.name]
    # informational for readers and `castle import`; reachability comes from networks
    expose = [span(p.lo, p.hi) + ("/udp" if p.proto == "udp" else "") for p in svc.spec.listen]
    ports = [_port_entry(svc, p) for p in _published(plan).get(svc.name, ())]
    aliases = svc.spec.aliases
    # one quoting pass for the service's strings, then cut back into their fields
    flat = [svc.name, svc.image, *expose, *aliases, *ports, *secrets]
    for net, ip in networks.items():
        flat += (net, ip)
    quoted = yaml_strings(flat)
    at = 2
    fields: list[list[str]] = []
    for count in (len(expose), len(aliases), len(ports), len(secrets)):
        fields.append(quoted[at:at + count])
        at += count
    pairs = quoted[at:]
    return ServiceRow(
        name=quoted[0], image=quoted[1],
        description=comment(svc.spec.description) if svc.spec.description else "",
        passthrough=yaml_block(dict(sorted(passthrough.items())), 4) if passthrough else "",
        expose=fields[0], aliases=fields[1], ports=fields[2],
        # a name, or a long-syntax table written as a flow mapping
        own_secrets=[yaml_scalar(m) for m in svc.spec.secrets],
        secrets=list(zip(fields[3][::2], fields[3][1::2], strict=True)),
        networks=list(zip(pairs[::2], pairs[1::2], strict=True)),
    )


def _networks(plan: Plan) -> list[tuple[str, str, str, str]]:
    """The top-level networks, quoted: (name, internal, subnet, gateway)."""
    flat: list[str] = []
    for n in plan.networks:
        flat += (n.name, str(n.subnet), str(n.gateway))
    quoted = yaml_strings(flat)
    flags = {b: yaml_scalar(b) for b in (False, True)}
    return [(quoted[i], flags[n.internal], quoted[i + 1], quoted[i + 2])
            for i, n in zip(range(0, len(quoted), 3), plan.networks, strict=True)]


def _published(plan: Plan) -> dict[str, list[Published]]:
    """The plan's published ports by service (indexed once, not searched per service)."""
    known: dict[str, list[Published]] | None = plan.memo.get("compose_published")
    if known is None:
        known = plan.memo["compose_published"] = {}
        for p in plan.published:
            known.setdefault(p.service, []).append(p)
    return known


def _recipe_configs(plan: Plan) -> dict[str, dict[str, Any]]:
    """Top-level configs of the TLS recipe files castle generate writes under tls/."""
    found: dict[str, dict[str, Any]] = {}
    for svc in plan.services:
        wiring = tls_recipes.service_tls(plan, svc.name)
        for cfg in wiring.configs if wiring else ():
            found[cfg.name] = {"file": f"./{cfg.out}"}
    return found


def context(plan: Plan) -> dict[str, Any]:
    """The template context of compose.yaml."""
    tls = tls_recipes.secret_files(plan)
    clash = sorted(set(tls) & set(plan.spec.compose.secrets))
    if clash:
        raise CastleError(f"[compose.secrets] {clash[0]!r} is the name of a TLS secret castle "
                          "writes: rename it")
    return {
        "header": header(plan.source_name, plan.sha256),
        "stack": plan.stack,
        "services": [service_row(plan, s) for s in plan.services],
        "networks": _networks(plan),
        "secrets": [
            (name, f"./{plan.spec.tls.dir}/{file}")
            for name, file in tls.items()
        ],
        "own_secrets": {name: relocate.top_object(body, plan.spec_dir)
                        for name, body in sorted(plan.spec.compose.secrets.items())},
        "volumes": {name: relocate.top_object(body, plan.spec_dir)
                    for name, body in sorted(plan.spec.compose.volumes.items())},
        "configs": {name: relocate.top_object(body, plan.spec_dir)
                    for name, body in sorted(plan.spec.compose.configs.items())}
                   | dict(sorted(_recipe_configs(plan).items())),
    }


def paths(plan: Plan) -> list[str]:
    """The files `outputs` writes, without rendering compose.yaml."""
    return [PATH, *(o.path for o in tls_recipes.outputs(plan))]


def outputs(plan: Plan) -> list[Output]:
    """The compose target's files."""
    return [Output(PATH, render("compose.yaml.j2", **context(plan))), *tls_recipes.outputs(plan)]
