"""compose.yaml: services on the networks their flows need, published ports, TLS secrets."""

from __future__ import annotations

from typing import Any

from castle.errors import CastleError
from castle.io.render import render
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


def service_context(plan: Plan, svc: PlanService) -> dict[str, Any]:
    """What the template needs about one service."""
    passthrough = relocate.service_keys(
        {k: v for k, v in svc.spec.compose.items() if k != "environment"}, plan.spec_dir)
    wiring = tls_recipes.service_tls(plan, svc.name)
    env = _environment(plan, svc, wiring)
    if env is not None:
        passthrough["environment"] = env
    secrets: list[dict[str, str]] = []
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
            secrets.append({"source": m.source, "target": target.removeprefix(prefix)})
    if svc.spec.container_firewall:
        caps = list(passthrough.get("cap_add") or [])
        passthrough["cap_add"] = sorted(set(caps) | {"NET_ADMIN"})
    tls_dir = plan.spec.tls.dir
    return {
        "name": svc.name,
        "image": svc.image,
        "description": svc.spec.description,
        "tier": svc.tier,
        "passthrough": dict(sorted(passthrough.items())),
        "networks": list(plan.address_text[svc.name].items()),
        "aliases": list(svc.spec.aliases),
        # informational for readers and `castle import`; reachability comes from networks
        "expose": [span(p.lo, p.hi) + ("/udp" if p.proto == "udp" else "")
                   for p in svc.spec.listen],
        "ports": [_port_entry(svc, p) for p in _published(plan).get(svc.name, ())],
        "secrets": secrets,
        "own_secrets": list(svc.spec.secrets),
        "tls_dir": tls_dir,
    }


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
        "services": [service_context(plan, s) for s in plan.services],
        "networks": plan.networks,
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
