"""compose.yaml: services on the networks their flows need, published ports, TLS secrets."""

from __future__ import annotations

from typing import Any, NamedTuple

from castle.errors import CastleError
from castle.io.render import comment, render, yaml_block, yaml_scalar, yaml_strings
from castle.io.write import Output, header
from castle.plan import OCTETS, Plan, PlanService, Published
from castle.spec.findings import INTERNET
from castle.spec.values import span
from castle.targets import relocate
from castle.targets.fw_addresses import dotted
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


class ServiceRow(NamedTuple):
    """What the template writes about one service, every value already quoted: YAML
    scalars through `yaml_strings` (the `yq` filter's quoting), the description through
    `comment`, the passthrough keys as a `yblock` at indentation 4. (A named tuple: the
    template unpacks it in its loop, with no attribute lookup a field.)"""

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


def service_rows(plan: Plan) -> list[ServiceRow]:
    """What the template needs about each service, quoted: the strings of every service in
    one `yaml_strings` batch, then cut back into their fields."""
    published = _published(plan)
    address_text = plan.address_text
    flat: list[str] = []
    extras: list[tuple[dict[str, Any], tuple[int, int, int, int, int]]] = []
    for svc in plan.services:
        spec = svc.spec
        wiring = tls_recipes.service_tls(plan, svc.name)
        if spec.compose or wiring is not None or spec.container_firewall:
            passthrough, secrets = _passthrough(plan, svc, wiring)
        else:  # nothing to pass through: no dict of keys to build and move
            passthrough, secrets = {}, []
        # informational for readers and `castle import`; reachability comes from networks
        expose = [span(p.lo, p.hi) + ("/udp" if p.proto == "udp" else "") for p in spec.listen]
        ports = [_port_entry(svc, p) for p in published[svc.name]] if svc.name in published \
            else []
        nets = address_text[svc.name]  # the networks, then their addresses
        flat += (svc.name, svc.image, *expose, *spec.aliases, *ports, *secrets, *nets,
                 *nets.values())
        extras.append((passthrough, (len(expose), len(spec.aliases), len(ports), len(secrets),
                                     len(nets))))
    quoted = yaml_strings(flat)
    rows: list[ServiceRow] = []
    at = 0
    for svc, (passthrough, (n_expose, n_aliases, n_ports, n_secrets, n_nets)) in zip(
            plan.services, extras, strict=True):
        name, image = quoted[at], quoted[at + 1]
        at += 2
        expose = quoted[at:at + n_expose]
        at += n_expose
        aliases = quoted[at:at + n_aliases]
        at += n_aliases
        ports = quoted[at:at + n_ports]
        at += n_ports
        pairs = quoted[at:at + n_secrets]
        at += n_secrets
        networks = list(zip(quoted[at:at + n_nets], quoted[at + n_nets:at + 2 * n_nets],
                            strict=True))
        at += 2 * n_nets
        description = svc.spec.description
        rows.append(ServiceRow(
            name, comment(description) if description else "", image,
            yaml_block(dict(sorted(passthrough.items())), 4) if passthrough else "",
            expose, networks, aliases, ports,
            # a name, or a long-syntax table written as a flow mapping
            [yaml_scalar(m) for m in svc.spec.secrets] if svc.spec.secrets else [],
            list(zip(pairs[::2], pairs[1::2], strict=True)) if pairs else []))
    return rows


def _networks(plan: Plan) -> list[tuple[str, str, str, str]]:
    """The top-level networks, quoted: (name, internal, subnet, gateway)."""
    flat: list[str] = []
    for n in plan.networks:  # the text from the integers: str() of an address is slow
        base, gateway = int(n.subnet.network_address), int(n.gateway)
        head = f"{OCTETS[base >> 24]}.{OCTETS[base >> 16 & 255]}.{OCTETS[base >> 8 & 255]}."
        flat += (n.name, f"{head}{OCTETS[base & 255]}/{n.subnet.prefixlen}",
                 head + OCTETS[gateway & 255] if gateway >> 8 == base >> 8 else dotted(gateway))
    quoted = yaml_strings(flat)
    flags = {b: yaml_scalar(b) for b in (False, True)}
    internal = [flags[n.internal] for n in plan.networks]
    return list(zip(quoted[::3], internal, quoted[1::3], quoted[2::3], strict=True))


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
        "services": service_rows(plan),
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
