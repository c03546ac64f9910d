"""The pieces of an import draft: draft services and flows, TOML words, names, port runs."""

from __future__ import annotations

import datetime
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import ValidationError

from castle.readers.compose_ports import PortMap
from castle.spec.model import ComposeTop
from castle.spec.values import PortRange

ANY_PORT = ("1-65535/tcp", "1-65535/udp")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
# Valid for zones.toml, so the draft loads; docker refuses it (capitals), so it cannot run by
# mistake before someone puts the real image in its place.
PLACEHOLDER_IMAGE = "REPLACE-ME:latest"
# Ports well-known server images listen on by default: a guess for services whose file
# says nothing (no expose, no ports), which is how most compose files run their databases.
IMAGE_PORTS = {
    "postgres": 5432, "postgis": 5432, "timescaledb": 5432, "mysql": 3306, "mariadb": 3306,
    "percona": 3306, "mongo": 27017, "mongodb": 27017, "redis": 6379, "valkey": 6379,
    "keydb": 6379, "memcached": 11211, "rabbitmq": 5672, "elasticsearch": 9200,
    "opensearch": 9200, "minio": 9000, "kafka": 9092, "zookeeper": 2181, "nats": 4222,
    "etcd": 2379, "clickhouse-server": 8123, "influxdb": 8086, "couchdb": 5984,
    "nginx": 80, "httpd": 80, "caddy": 80, "traefik": 80, "haproxy": 80, "grafana": 3000,
    "prometheus": 9090, "kibana": 5601, "logstash": 5044, "jaeger": 16686,
    "cassandra": 9042, "neo4j": 7687, "mssql": 1433, "mongo-express": 8081,
    "adminer": 8080, "pgadmin4": 80, "phpmyadmin": 80, "wordpress": 80, "nextcloud": 80,
    "gitea": 3000, "keycloak": 8080, "vault": 8200, "consul": 8500, "loki": 3100,
    "tempo": 3200, "otel-collector": 4317, "opentelemetry-collector-contrib": 4317,
    "opentelemetry-collector": 4317, "temporal": 7233, "memcache": 11211,
    "node-exporter": 9100, "cadvisor": 8080,
}


@dataclass
class DraftFlow:
    """One [[flows]] entry of the draft, with the comments that explain the guess."""

    src: list[str]
    dst: str
    ports: list[int | str] | None = None
    waiver: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class DraftService:
    """One [services.NAME] table of the draft."""

    name: str
    image: str
    tier: str = ""
    listen: list[int | str] = field(default_factory=list)
    publish: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    compose: list[tuple[str, str]] = field(default_factory=list)  # (toml key, toml value)
    aliases: list[str] = field(default_factory=list)
    secrets: list[Any] = field(default_factory=list)
    address: str = ""  # a static address others name: kept


def toml_key(key: str) -> str:
    """A TOML key: bare when it can be, else a quoted string."""
    return key if _BARE_KEY.fullmatch(key) else toml_value(key)


def toml_value(value: Any) -> str:
    """A TOML inline value that reads back as `value` (None is not representable: drop it
    before calling)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # JSON's escapes are a subset of TOML's; DEL must be escaped in TOML too.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, datetime.date | datetime.time):
        return toml_value(value.isoformat())
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        items = [f"{toml_key(str(k))} = {toml_value(v)}" for k, v in value.items()
                 if v is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    return toml_value(str(value))


def dns_name(name: str, taken: set[str], fallback: str = "svc") -> str:
    """A DNS-1123 label close to a compose name, unique among `taken`."""
    base = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].strip("-") or fallback
    candidate, k = base, 1
    while candidate in taken or candidate == "internet":
        k += 1
        candidate = f"{base[:62 - len(str(k))].rstrip('-')}-{k}"
    taken.add(candidate)
    return candidate


def image_repo(image: str) -> str:
    """The last path part of an image name without tag or digest: "library/postgres:16" ->
    "postgres"."""
    return image.rsplit("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0].lower()


def _port_text(r: PortRange) -> int | str:
    """80 for one tcp port, else "8000-8010/tcp" or "53/udp", as zones.toml writes ports."""
    if r.proto == "tcp" and r.lo == r.hi:
        return r.lo
    ports = str(r.lo) if r.lo == r.hi else f"{r.lo}-{r.hi}"
    return f"{ports}/{r.proto}"


def _top_rejected(kind: str, name: str, body: Any) -> str:
    """Why castle's [compose] table would refuse this top-level object ("" when it takes it)."""
    if not isinstance(body, dict):
        return f"its body is a {type(body).__name__}, not a mapping"
    try:
        ComposeTop.model_validate({kind: {name: body}})
    except ValidationError as exc:
        return str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
    return ""


def _ports(ports: list[PortMap] | tuple[PortMap, ...]) -> str:
    return ", ".join(str(p) for p in ports)


def _runs(ports: list[PortMap]) -> list[list[PortMap]]:
    """Split ports (sorted by protocol and container port) into runs that one publish entry
    can carry: consecutive container and host ports, one bind address, fixed or ephemeral."""
    runs: list[list[PortMap]] = []
    for p in ports:
        last = runs[-1][-1] if runs else None
        if (last is not None and (last.proto, last.host_ip) == (p.proto, p.host_ip)
                and last.container + 1 == p.container
                and (last.host is None) == (p.host is None)
                and (p.host is None or last.host is not None and last.host + 1 == p.host)):
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs
