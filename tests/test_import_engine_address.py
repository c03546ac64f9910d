"""An imported static address on a real Docker Engine: the container gets the address the
original file gave it, and the service whose environment names it reaches it there.

The oracle is the engine (its IPAM hands out the address, its bridge carries the packets)
and real sockets: a busybox `nc` in one container talks to an echo server in the other.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from castle.targets.generate import generate
from castle.views.importer import import_compose
from tests.engine import Engine

pytestmark = pytest.mark.engine

STATIC = """\
services:
  resolver:
    image: example/resolver:1
    networks:
      dnsnet:
        ipv4_address: 172.28.5.53
  app:
    image: example/app:1
    environment:
      DNS_SERVER: 172.28.5.53:5353
    networks: [dnsnet]
networks:
  dnsnet:
    ipam:
      config:
        - subnet: 172.28.0.0/16
"""


def _talks(eng: Engine, project: str, src: str, host: str, port: int) -> bool:
    """True when `src` reaches an echo server at host:port."""
    box = eng.container(project, src)
    run = eng.exec(box, "sh", "-c", f"echo castle-{port} | nc -w 2 {host} {port}", check=False)
    return f"castle-{port}" in run.stdout


def test_kept_address_is_the_containers_and_reached_there(docker_engine: Engine,
                                                          tmp_path: Path) -> None:
    eng = docker_engine
    folder = tmp_path / "stack"
    folder.mkdir()
    (folder / "compose.yaml").write_text(STATIC)
    spec = folder / "zones.toml"
    spec.write_text(import_compose([folder / "compose.yaml"], folder))
    out = folder / "out"
    generate(spec, out, targets=["compose"])
    doc = yaml.safe_load((out / "compose.yaml").read_text())
    project = str(doc["name"])
    eng.tag_probe("example/resolver:1", "example/app:1")
    eng.up(out, project)
    try:
        resolver = eng.container(project, "resolver")
        nets = eng.inspect(resolver)["NetworkSettings"]
        assert isinstance(nets, dict)
        addresses = {str(n["IPAddress"]) for n in nets["Networks"].values()}
        assert "172.28.5.53" in addresses
        eng.serve(resolver, [(5353, "tcp")])
        assert _talks(eng, project, "app", "172.28.5.53", 5353)
        assert _talks(eng, project, "app", "resolver", 5353)
        # negative controls: no one holds .54, and nobody serves 5354
        assert not _talks(eng, project, "app", "172.28.5.54", 5353)
        assert not _talks(eng, project, "app", "172.28.5.53", 5354)
    finally:
        eng.down(out, project)


PORTS = """\
services:
  web:
    image: example/web:1
    ports:
      - "${WEB_PORT:-18088}:80"
"""


def _host_talks(eng: Engine, port: int) -> bool:
    run = eng.host("sh", "-c", f"echo castle-{port} | busybox nc -w 2 127.0.0.1 {port}",
                   check=False)
    return f"castle-{port}" in run.stdout


def test_variable_host_port_is_filled_at_start(docker_engine: Engine, tmp_path: Path) -> None:
    """The generated file publishes ${WEB_PORT:-18088}: the default without the variable,
    the variable's value with it (the engine's own port table and a real connection)."""
    eng = docker_engine
    folder = tmp_path / "ports"
    folder.mkdir()
    (folder / "compose.yaml").write_text(PORTS)
    spec = folder / "zones.toml"
    spec.write_text(import_compose([folder / "compose.yaml"], folder))
    out = folder / "out"
    generate(spec, out, targets=["compose"])
    assert '"${WEB_PORT:-18088}:80/tcp"' in (out / "compose.yaml").read_text()
    project = str(yaml.safe_load((out / "compose.yaml").read_text())["name"])
    eng.tag_probe("example/web:1")
    for value, port in ((None, 18088), ("18089", 18089)):
        saved = dict(eng.env)
        if value is not None:
            eng.env["WEB_PORT"] = value
        try:
            eng.up(out, project)
            web = eng.container(project, "web")
            assert f":{port}" in eng.docker("port", web, "80/tcp").stdout
            eng.serve(web, [(80, "tcp")])
            assert _host_talks(eng, port)
            assert not _host_talks(eng, 18090)  # negative control: nothing published there
        finally:
            eng.down(out, project)
            eng.env.clear()
            eng.env.update(saved)
