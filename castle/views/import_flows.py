"""Which flows an import draft keeps: direction from the caller's evidence, guesses only for
plausible clients, and the pairs the walls close."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from castle.readers.compose import ComposeFile, Reach
from castle.readers.compose_ports import merge_ports
from castle.spec.values import PortRange, parse_port
from castle.views.evidence import Evidence
from castle.views.import_draft import ANY_PORT, DraftFlow, DraftService, _port_text, image_repo
from castle.views.import_values import wrap


class Importer(Protocol):
    """What the flow decisions read and fill in of the draft being built."""

    cf: ComposeFile
    rc: Reach
    services: dict[str, DraftService]
    flows: list[DraftFlow]
    names: dict[str, str]
    evidence: dict[str, Evidence]
    closed: list[tuple[str, str]]

# Images that only answer: databases, caches, brokers, search and object stores, mail and
# request catchers, DNS, tracing backends, a web server or proxy without a mounted config.
# Whom they call (a replica, a broker's cluster peer) is written in their configuration, so
# with nothing written they get no guessed flow out.
SERVER_IMAGES = frozenset({
    "postgres", "postgis", "timescaledb", "pgvector", "mysql", "mariadb", "percona",
    "percona-server", "mongo", "mongodb", "mongodb-community-server", "redis", "redis-stack",
    "redis-stack-server", "valkey", "keydb", "dragonfly", "memcached", "memcache",
    "rabbitmq", "kafka", "cp-kafka", "zookeeper", "cp-zookeeper", "nats", "nats-streaming",
    "etcd", "clickhouse-server", "clickhouse", "influxdb", "couchdb", "couchbase",
    "cassandra", "scylla", "neo4j", "mssql", "mssql-server", "elasticsearch", "opensearch",
    "solr", "meilisearch", "typesense", "qdrant", "weaviate", "chroma", "arangodb",
    "rethinkdb", "cockroach", "surrealdb", "questdb", "minio", "azurite", "localstack",
    "mosquitto", "eclipse-mosquitto", "emqx", "activemq", "activemq-artemis", "pulsar",
    "redpanda", "vernemq", "mailhog", "mailpit", "maildev", "mailcatcher", "mailcrab",
    "smtp4dev", "mailserver", "postfix", "requestcatcher", "coredns", "bind9", "dnsmasq",
    "clamav", "prosody", "jaeger", "all-in-one", "zipkin", "loki", "tempo", "mimir",
    "victoria-metrics", "victoria-logs", "vault", "consul", "nginx", "httpd", "caddy",
    "memgraph", "ejabberd", "coturn", "registry",
})
SERVER_FAMILIES = ("postgres", "mysql", "mariadb", "mongo", "redis", "valkey", "memcache",
                   "rabbitmq", "elasticsearch", "opensearch", "clickhouse", "cassandra",
                   "influxdb", "mailhog", "timescale", "cockroach", "minio", "zookeeper",
                   "kafka", "nats", "mssql")
# Images that call what their user points them at (admin consoles, dashboards): clients
# even when others call them.
CLIENT_IMAGES = frozenset({
    "adminer", "pgadmin4", "phpmyadmin", "mongo-express", "redisinsight", "redis-commander",
    "grafana", "metabase", "superset", "kibana", "opensearch-dashboards", "cloudbeaver",
    "dbgate", "pgweb", "sqlpad", "kafka-ui", "akhq", "prometheus",
})


def server_image(repo: str) -> bool:
    """A server-only image, its variants included: redis, redis-stack, redismod, postgres-16
    (a known name, or a name that starts with a known family)."""
    return repo in SERVER_IMAGES or any(
        repo.startswith(family) for family in SERVER_FAMILIES)


def served(imp: Importer) -> dict[str, list[int | str]]:
    """Ports each service serves, known before any flow is chosen: its listen (expose,
    ports, well-known image) plus ports its callers and its own configuration name."""
    out: dict[str, list[int | str]] = {}
    for name in imp.cf.services:
        draft = imp.services[name]
        named = set(imp.evidence.get(name, Evidence()).serves)
        for caller, ev in sorted(imp.evidence.items()):
            named |= {p for p in ev.calls.get(name, set()) if caller != name}
        known = [parse_port(x) for x in draft.listen]
        for port in sorted(named):
            if not any(r.covers(PortRange("tcp", port, port)) for r in known):
                draft.listen.append(port)
                known.append(PortRange("tcp", port, port))
                draft.notes.append(f"listen {port}: named in the file's configuration")
        out[name] = list(draft.listen)
    return out


def client(imp: Importer, name: str) -> bool:
    """True when a service may call its neighbours although the file names none: nothing
    in its configuration names a host (its own included), it is no server-only image, and
    it is built here (configuration in its code), an admin console or dashboard, or an image
    nobody calls."""
    ev = imp.evidence.get(name, Evidence())
    svc = imp.cf.services[name]
    if ev.calls or ev.names_self or svc.depends_on:
        return False
    repo = image_repo(svc.image)
    if repo in CLIENT_IMAGES:
        return True
    if server_image(repo):
        return False
    if "build" in svc.raw:
        return True
    # a sidecar in its network namespace depends on it without calling it
    return not any(name in e.calls for e in imp.evidence.values()) and not any(
        name in o.depends_on for o in imp.cf.services.values()
        if o.network_mode != f"service:{name}")


def called(imp: Importer, src: str, dst: str) -> tuple[str, list[int | str] | None] | None:
    """(why, ports) when src's own configuration or depends_on shows that it calls dst, else
    None; ports None means all of dst's listen ports."""
    ev = imp.evidence.get(src, Evidence())
    depends = dst in imp.cf.services[src].depends_on
    if dst not in ev.calls and not depends:
        return None
    why = (f"{src!r} calls {dst!r} ({ev.why[dst]})" if dst in ev.calls
           else f"{src!r} depends on {dst!r} (depends_on or links)")
    seen = sorted(ev.calls.get(dst, set()))
    if seen:
        return why, list(seen)
    draft = imp.services[dst]
    if not draft.listen:
        draft.listen.append(ANY_PORT[0])
        draft.notes.append(f"{src!r} calls it on a port the file does not name: every tcp "
                           "port is open to it; narrow listen to the real ones")
    return why, None


def pair_flows(imp: Importer) -> None:
    """A flow per direction the file shows for each pair that shared a network; where
    nothing shows either direction, a guessed flow from a plausible client to the ports the
    other serves; else the pair is closed (named at the top of the draft)."""
    cf, rc = imp.cf, imp.rc
    ports = served(imp)
    guesses = {n: client(imp, n) for n in cf.services}
    for pair, via in sorted(rc.pairs.items(), key=lambda kv: sorted(kv[0])):
        a, b = sorted(pair)
        if any(v.startswith("host network") for v in via) and len(via) == 1:
            h, pub = (a, b) if a in rc.host_mode else (b, a)
            runs = merge_ports({(p.proto, p.container) for p in cf.services[pub].ports})
            imp.flows.append(DraftFlow(
                [imp.names[h]], imp.names[pub], [_port_text(r) for r in runs],
                notes=[f"{h!r} was on the host network and reached {pub!r}'s published "
                       "ports through the host"]))
            continue
        how = "; ".join(via)
        chosen: list[tuple[str, str, str, list[int | str] | None]] = []
        for src, dst in ((a, b), (b, a)):
            seen = called(imp, src, dst)
            if seen is not None:
                chosen.append((src, dst, *seen))
        if not chosen:
            for src, dst in ((a, b), (b, a)):
                if guesses[src] and ports[dst]:
                    chosen.append((src, dst, f"guessed: nothing in the file says whom {src!r} "
                                   f"calls; {dst!r} serves {_list(ports[dst])}", None))
        if not chosen:
            imp.closed.append((imp.names[a], imp.names[b]))
            continue
        for src, dst, note, named in chosen:
            imp.flows.append(DraftFlow([imp.names[src]], imp.names[dst], named,
                                       notes=[f"shared in the file: {how}", note]))


def _list(ports: list[int | str]) -> str:
    return ", ".join(str(p) for p in ports)


def config_files(cf: ComposeFile) -> dict[str, str]:
    """Top-level config name -> its file, absolute (compose-go made it so, else from the
    compose file's folder)."""
    root = cf.path.resolve().parent
    out = {}
    for name, body in ((cf.interpolated or cf.raw).get("configs") or {}).items():
        file = body.get("file") if isinstance(body, dict) else None
        if isinstance(file, str):
            out[str(name)] = str(root / file) if not Path(file).is_absolute() else file
    return out


def closed_lines(pairs: list[tuple[str, str]], neighbours: dict[str, set[str]]) -> list[str]:
    """The closed pairs, one entry per service, the one closed off from the most others
    first: `db <-> a, b;` or, for a long list, `db <-> all but c;` (every service it shared a
    network with except c), so a database cut off from a whole stack is one short line."""
    closed: dict[str, set[str]] = {}
    for a, b in pairs:
        closed.setdefault(a, set()).add(b)
        closed.setdefault(b, set()).add(a)
    left = {tuple(sorted(p)) for p in pairs}
    lines: list[str] = []
    while left:
        count: dict[str, int] = {}
        for a, b in left:
            count[a] = count.get(a, 0) + 1
            count[b] = count.get(b, 0) + 1
        head = min(count, key=lambda n: (-count[n], n))
        others = sorted(b if a == head else a for a, b in left if head in (a, b))
        kept = sorted(neighbours.get(head, set()) - closed[head] - {head})
        left = {p for p in left if head not in p}
        if len(kept) < len(others) > 3:
            text = f"{head} <-> all but {', '.join(kept)};" if kept else f"{head} <-> all;"
        else:
            text = f"{head} <-> {', '.join(others)};"
        words = wrap([text], width=88)
        lines += words[:1] + [f"    {w}" for w in words[1:]]
    return lines
