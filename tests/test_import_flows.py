"""Which flows `castle import` keeps: the caller's evidence gives the direction, guesses come
only from plausible clients, and every pair it closes is named at the top of the draft.

Each case is a small compose file whose calls are known by construction; each evidence
kind has a negative control (the same file without that evidence) so a check cannot pass
by accident.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml

from castle.views.import_flows import closed_lines
from castle.views.importer import import_compose
from tests.test_import import P, closed_pairs


def _draft(tmp_path: Path, services: dict[str, Any], **top: Any) -> tuple[str, dict[str, Any]]:
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump({"services": services, **top}))
    text = import_compose(path, tmp_path)
    return text, tomllib.loads(text)


def _flows(data: dict[str, Any]) -> dict[tuple[str, str], Any]:
    return {(f["from"], f["to"]): f.get("ports") for f in data["flows"]
            if isinstance(f["from"], str) and "internet" not in (f["from"], f["to"])}


def _all_pairs(data: dict[str, Any]) -> set[frozenset[str]]:
    names = sorted(data["services"])
    return {P(a, b) for i, a in enumerate(names) for b in names[i + 1:]}


def test_server_images_get_no_guessed_flows(tmp_path: Path) -> None:
    """An app built here whose file names nobody may call what serves a port; a database and
    a cache never get guessed flows out, and the pair between them is closed and named."""
    text, data = _draft(tmp_path, {
        "app": {"build": "."},
        "db": {"image": "postgres:16"},
        "cache": {"image": "redis:7-alpine"},
    })
    assert set(_flows(data)) == {("app", "db"), ("app", "cache")}
    assert closed_pairs(text, _all_pairs(data)) == {P("cache", "db")}
    assert "guessed: nothing in the file says whom 'app' calls; 'db' serves 5432" in text


def test_guesses_only_to_ports_served(tmp_path: Path) -> None:
    """A guessed flow goes only to a service that serves a known port; one that serves
    nothing known is closed, not opened on every port."""
    text, data = _draft(tmp_path, {"app": {"build": "."}, "blob": {"image": "acme/blob:1"}})
    assert _flows(data) == {}
    assert closed_pairs(text, _all_pairs(data)) == {P("app", "blob")}
    _, data = _draft(tmp_path, {"app": {"build": "."},
                                "blob": {"image": "acme/blob:1", "expose": ["7000"]}})
    assert _flows(data) == {("app", "blob"): None}
    assert data["services"]["blob"]["listen"] == [7000]


def test_evidence_gives_direction_not_who_listens(tmp_path: Path) -> None:
    """The proxy names the app in a URL: proxy -> app on that port, although the proxy is the
    one that listens; nothing flows back."""
    _, data = _draft(tmp_path, {
        "proxy": {"image": "acme/edge:2", "expose": ["80"],
                  "environment": {"UPSTREAM": "http://web:9000/"}},
        "web": {"image": "acme/web:1"},
    })
    assert _flows(data) == {("proxy", "web"): [9000]}
    assert data["services"]["web"]["listen"] == [9000]


def test_urls_and_host_port_strings(tmp_path: Path) -> None:
    """`scheme://host:port`, `host:port` in a command and `X_HOST` + `X_PORT` name a call
    and its port; the same name inside a path does not (negative control)."""
    _, data = _draft(tmp_path, {
        "worker": {"image": "acme/worker:1",
                   "environment": {"API": "https://api:8443/v1", "DB_HOST": "db",
                                   "DB_PORT": "6432", "DATA": "/srv/cache/x"},
                   "command": ["run", "--broker", "mq:5673"]},
        "api": {"image": "acme/api:1"}, "db": {"image": "acme/pool:1"},
        "mq": {"image": "acme/mq:1"}, "cache": {"image": "memcached:1"},
    })
    assert _flows(data) == {("worker", "api"): [8443], ("worker", "db"): [6432],
                            ("worker", "mq"): [5673]}


def test_healthchecks_are_not_calls(tmp_path: Path) -> None:
    """A healthcheck that names another service is not a call: no flow; the same URL in the
    environment is one (negative control)."""
    check = {"test": ["CMD", "curl", "-f", "http://api:8000/health"]}
    api = {"image": "acme/api:1", "expose": ["8000"]}
    _, data = _draft(tmp_path, {"mon": {"image": "acme/mon:1", "healthcheck": check,
                                        "environment": {"SINK": "x:1"}},
                                "api": api, "x": {"image": "acme/x:1"}})
    assert ("mon", "x") in _flows(data) and ("mon", "api") not in _flows(data)
    _, data = _draft(tmp_path, {"mon": {"image": "acme/mon:1", "healthcheck": check,
                                        "environment": {"SINK": "x:1",
                                                        "URL": "http://api:8000/health"}},
                                "api": api, "x": {"image": "acme/x:1"}})
    assert {("mon", "x"), ("mon", "api")} <= set(_flows(data))


def test_traefik_labels(tmp_path: Path) -> None:
    """traefik routes to the services whose labels enable it, on the label's port;
    `traefik.enable=false` routes nothing (negative control)."""
    def stack(enable: str) -> dict[str, Any]:
        return {
            "edge": {"image": "traefik:3", "ports": ["80:80"],
                     "command": ["--providers.docker.exposedByDefault=false"]},
            "ui": {"image": "acme/ui:1", "labels": [
                f"traefik.enable={enable}",
                "traefik.http.services.ui.loadbalancer.server.port=3000",
                "traefik.http.routers.ui.rule=Host(`x`)"]},
        }
    _, data = _draft(tmp_path, stack("true"))
    assert _flows(data) == {("edge", "ui"): [3000]}
    text, data = _draft(tmp_path, stack("false"))
    assert ("edge", "ui") not in _flows(data)


def test_caddy_docker_proxy_labels(tmp_path: Path) -> None:
    """caddy-docker-proxy routes to `{{upstreams PORT}}`; the same label under a plain caddy
    image (which does not read labels) routes nothing (negative control)."""
    def stack(image: str) -> dict[str, Any]:
        return {"edge": {"image": image, "ports": ["443:443"]},
                "app": {"image": "acme/app:1", "labels": {
                    "caddy": "app.example", "caddy.reverse_proxy": "{{upstreams 8080}}"}}}
    _, data = _draft(tmp_path, stack("lucaslorentz/caddy-docker-proxy:2.9"))
    assert _flows(data) == {("edge", "app"): [8080]}
    _, data = _draft(tmp_path, stack("caddy:2"))
    assert ("edge", "app") not in _flows(data)


def test_mounted_proxy_config_inside_the_project_only(tmp_path: Path) -> None:
    """A mounted nginx.conf under the project's folder names the upstream; the same file
    mounted from outside the folder is not read (negative control)."""
    project = tmp_path / "project"
    (project / "conf").mkdir(parents=True)
    conf = "upstream app { server web; }\nserver { location / { proxy_pass http://app; } }\n"
    (project / "conf" / "nginx.conf").write_text(conf)
    outside = tmp_path / "elsewhere.conf"
    outside.write_text(conf)

    def flows(source: str) -> dict[tuple[str, str], Any]:
        _, data = _draft(project, {
            "proxy": {"image": "nginx:1.27", "ports": ["80:80"],
                      "volumes": [f"{source}:/etc/nginx/nginx.conf:ro"]},
            "web": {"image": "acme/web:1", "expose": ["8000"]},
        })
        return _flows(data)
    assert flows("./conf/nginx.conf") == {("proxy", "web"): None}
    assert ("proxy", "web") not in flows(str(outside))


def test_a_service_naming_itself_is_configured(tmp_path: Path) -> None:
    """A service whose configuration names only its own URL is configured in the file: it
    gets no guessed flows, and its own port joins its listen."""
    _, data = _draft(tmp_path, {
        "runner": {"image": "acme/runner:1", "environment": {"SELF": "http://runner:8080"}},
        "db": {"image": "postgres:16"},
    })
    assert _flows(data) == {}
    assert data["services"]["runner"]["listen"] == [8080]


def test_closed_lines_are_one_entry_per_service() -> None:
    """A service closed off from most of its neighbours is one `all but` entry; a short list
    is written out; the entries read back as the same pairs."""
    names = [f"s{i}" for i in range(6)]
    was = {P(a, b) for i, a in enumerate(names) for b in names[i + 1:]}
    neighbours = {n: set(names) - {n} for n in names}
    closed = sorted(tuple(sorted(p)) for p in was if "s0" in p and "s1" not in p)
    lines = closed_lines([(a, b) for a, b in closed], neighbours)
    assert lines == ["s0 <-> all but s1;"]
    text = ("# - closed by the walls (they shared a network, but no guess applies and nothing "
            "in the\n#   file says that one calls the other):\n"
            + "".join(f"#   {line}\n" for line in lines) + "version = 1\n")
    assert closed_pairs(text, was) == {P(*p) for p in closed}
    assert closed_lines([("a", "b")], {"a": {"b"}, "b": {"a"}}) == ["a <-> b;"]


def test_mounted_source_tree_reads_config_files_only(tmp_path: Path) -> None:
    """An app that mounts the whole project folder reads its config files (settings.yml,
    .env as an environment), not the compose file, which names every service (`image:
    redis:7` is no call to redis on port 7), nor source code."""
    services = {
        "app": {"image": "acme/app:1", "volumes": ["./:/code"], "depends_on": ["api"]},
        "other": {"image": "acme/other:1", "environment": {"CACHE": "redis:6379"}},
        "redis": {"image": "redis:7"}, "db": {"image": "postgres:16"},
        "api": {"image": "acme/api:1", "expose": ["9000"]},
        "search": {"image": "acme/search:1", "expose": ["9200"]},
    }
    (tmp_path / "main.py").write_text("URL = 'http://search:9200/'\n")
    _, data = _draft(tmp_path, services)
    assert {dst for src, dst in _flows(data) if src == "app"} == {"api"}
    (tmp_path / "settings.yml").write_text("cache: redis:6379\n")
    (tmp_path / ".env").write_text("DB_HOST=db\n")
    _, data = _draft(tmp_path, services)
    assert {dst for src, dst in _flows(data) if src == "app"} == {"api", "redis", "db"}
