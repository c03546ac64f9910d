"""The wall rules for TLS: tls flows, tls_env references and the server recipes' own keys."""

from __future__ import annotations

from collections.abc import Set as AbstractSet

from castle.spec.findings import Edge, Loc, closest, is_outside
from castle.spec.model import Service, Spec, spec_recipe

_NONE: frozenset[str] = frozenset()  # no servers, no callers


class TlsRules:
    """The TLS checks of castle.spec.rules.Checker, which supplies these fields and methods."""

    spec: Spec
    skip_flows: frozenset[int]
    broken: frozenset[str]
    edges: list[Edge]

    def error(self, loc: Loc, message: str, hint: str = "") -> None:
        """Record an error (Checker's)."""
        raise NotImplementedError

    def warn(self, loc: Loc, message: str, hint: str = "") -> None:
        """Record a warning (Checker's)."""
        raise NotImplementedError

    def check_tls(self) -> None:
        """tls_env references must match the service's tls flows; no clash with compose env."""
        flows = self.spec.flows
        tls_flows = {i for i, flow in enumerate(flows) if flow.tls}
        tls_edges = [e for e in self.edges if e.flow in tls_flows] if tls_flows else []
        pairs = {(e.src, e.dst) for e in tls_edges if not is_outside(e.src)}
        for e in tls_edges:
            if is_outside(e.src) or is_outside(e.dst):
                self.error(("flows", e.flow, "tls"), "tls = true needs a service at both ends",
                           "castle makes certificates for services only; remove tls here")
                break
        # client -> the servers its tls flows reach; the services some tls flow reaches
        servers_of: dict[str, set[str]] = {}
        for src, dst in pairs:
            servers_of.setdefault(src, set()).add(dst)
        reached = {dst for _, dst in pairs}
        # server -> the services that reach it without tls (for the recipes' warning)
        plain: dict[str, set[str]] = {}
        for e in self.edges if pairs else ():
            if not is_outside(e.src) and not flows[e.flow].tls:
                plain.setdefault(e.dst, set()).add(e.src)
        # with a flow or service already rejected the pairs are incomplete: references are
        # checked once those errors are fixed, rather than reported falsely now
        trusted = not self.skip_flows and not self.broken
        for name, svc in self.spec.services.items():
            servers = servers_of.get(name, _NONE)
            is_server = name in reached
            if not svc.tls_env:  # most services: only the recipe's checks apply
                if trusted and (is_server or servers):
                    self.check_recipe(name, svc, is_server, plain.get(name, _NONE))
                continue
            if (trusted and not servers and not is_server
                    and all(ref.startswith("=") for ref in svc.tls_env.values())):
                self.warn(("services", name, "tls_env"), f"{name!r} is in no tls flow: its "
                          "tls_env is not written", "add tls = true to a flow, or drop it")
            for key, ref in svc.tls_env.items():
                if not trusted:
                    break
                loc = ("services", name, "tls_env", key)
                if ref.startswith("="):
                    continue
                if ref.startswith("server_") and not is_server:
                    self.error(loc, f"{ref} but no tls flow reaches {name!r}",
                               "add tls = true to a flow into it, or drop the entry")
                elif ref.startswith("client_"):
                    dest = ref.split(":", 1)[1]
                    if dest not in servers:
                        self.error(loc, f"{ref} but {name!r} has no tls flow to {dest!r}",
                                   closest(dest, sorted(servers)) or "add tls = true to that flow")
                elif ref == "ca" and not is_server and not servers:
                    self.error(loc, f"{name!r} is in no tls flow", "add tls = true to a flow")
            if svc.tls_env:
                # tls_env replaces the default wiring entirely: say which files nothing points at.
                refs = set(svc.tls_env.values())
                wanted = ({"server_cert", "server_key"} if is_server else set()) | {
                    f"client_{kind}:{dest}" for dest in servers for kind in ("cert", "key")}
                missing = sorted(wanted - refs)
                if missing:
                    self.warn(("services", name, "tls_env"),
                              f"no variable points at {', '.join(missing)}",
                              "the secret is mounted, but the program is not told where; add "
                              "an entry (or drop tls_env to get the default wiring)")
            env = svc.compose.get("environment")
            names: set[str] = set()
            if isinstance(env, dict):
                names = set(env)
            elif isinstance(env, list):
                names = {str(x).split("=", 1)[0] for x in env}
            for key in sorted(names & set(svc.tls_env)):
                self.error(("services", name, "compose", "environment"),
                           f"{key} is set both here and in tls_env", "keep one of them")
            if trusted and (is_server or servers):
                self.check_recipe(name, svc, is_server, plain.get(name, _NONE))

    def check_recipe(self, name: str, svc: Service, is_server: bool,
                     callers: AbstractSet[str]) -> None:
        """A server recipe writes the command (and the entrypoint): passthrough may not.
        `callers` are the services whose flows reach it without tls."""
        recipe = spec_recipe(svc)
        if not is_server or recipe == "generic":
            return
        plain = sorted(callers)
        if plain:
            self.warn(("services", name, "tls"), f"the {recipe} TLS recipe makes {name!r} "
                      f"TLS-only with client certificates, but flows from "
                      f"{', '.join(plain)} reach it without tls",
                      "add tls = true to those flows too")
        if recipe == "nginx":
            return
        owned = ["command", "entrypoint"]  # the entrypoint hands the key to the server's user
        for key in owned:
            if key in svc.compose:
                self.error(("services", name, "compose", key),
                           f"the {recipe} TLS recipe writes {key} for {name!r}",
                           f'drop {key} here, or set [services.{name}.tls] recipe = "generic" '
                           "and wire TLS yourself")
