"""The real Docker Engine lab itself: a compose stack comes up and probes tell open from closed.

The oracle is Docker's own behaviour (bridges, published ports, docker-proxy) as seen by
real sockets; each positive probe has a negative twin, so the prober cannot always say yes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine import HOST_V4, HOST_V6, PROBE_IMAGE, Engine, Probe

pytestmark = pytest.mark.engine

COMPOSE = """\
services:
  front:
    image: castle-lab-front:1
    networks:
      edge: {ipv4_address: 10.201.0.2}
      inner: {ipv4_address: 10.201.1.2}
    ports: ["8080:80/tcp", "5353:53/udp"]
  back:
    image: castle-lab-back:1
    networks:
      inner: {ipv4_address: 10.201.1.3}
  lone:
    image: castle-lab-back:1
    networks:
      apart: {ipv4_address: 10.201.2.2}
networks:
  edge:
    ipam: {config: [{subnet: 10.201.0.0/24}]}
  inner:
    internal: true
    ipam: {config: [{subnet: 10.201.1.0/24}]}
  apart:
    internal: true
    ipam: {config: [{subnet: 10.201.2.0/24}]}
"""


def test_stack_up_and_probes(docker_engine: Engine, tmp_path: Path) -> None:
    """Published ports answer from outside (v4 and v6); unshared networks do not."""
    eng = docker_engine
    (tmp_path / "compose.yaml").write_text(COMPOSE)
    eng.tag_probe("castle-lab-front:1", "castle-lab-back:1")
    eng.up(tmp_path, "lab")
    try:
        front, back = eng.container("lab", "front"), eng.container("lab", "back")
        lone = eng.container("lab", "lone")
        eng.serve(front, [(80, "tcp"), (53, "udp")])
        eng.serve(back, [(6379, "tcp")])
        out, host = eng.outside_ns, eng.host_ns
        want = {
            Probe(out, HOST_V4, 8080): True,
            Probe(out, HOST_V4, 5353, "udp"): True,
            Probe(out, HOST_V6, 8080): True,  # docker-proxy on [::]: the IPv6 path exists
            Probe(out, HOST_V4, 8081): False,  # nothing published there
            Probe(out, HOST_V4, 5354, "udp"): False,
            Probe(eng.netns(front), "10.201.1.3", 6379): True,  # shared network
            Probe(eng.netns(lone), "10.201.1.3", 6379): False,  # no shared network
            Probe(eng.netns(front), "10.201.1.3", 6380): False,  # nobody listens
            Probe(host, "10.201.0.2", 80): True,  # the host reaches its bridges
        }
        assert eng.probe_all(want) == want
        listening = eng.host("ss", "-Hltn").stdout
        assert "[::]:8080" in listening  # docker-proxy, the path castle must close
        assert eng.inspect(front)["Config"]["Image"] == "castle-lab-front:1"  # type: ignore[index]
    finally:
        eng.down(tmp_path, "lab")
    assert eng.docker("ps", "-aq").stdout.strip() == ""


def test_exec_in_probe_image(docker_engine: Engine) -> None:
    """`exec` runs busybox tools inside a container; a failing command raises."""
    eng = docker_engine
    cid = eng.docker("run", "-d", "--rm", PROBE_IMAGE).stdout.strip()
    try:
        assert eng.exec(cid, "cat", "/var/www/index.html").stdout == "castle\n"
        assert eng.exec(cid, "false", check=False).returncode == 1
    finally:
        eng.docker("rm", "-f", cid)


@pytest.mark.slow
def test_server_image_has_real_servers(docker_engine: Engine) -> None:
    """The cached Debian image carries the servers the TLS and import tests run."""
    eng = docker_engine
    tag = eng.server_image()
    cid = eng.docker("run", "-d", "--rm", tag).stdout.strip()
    try:
        for argv, text in ((["/usr/lib/postgresql/15/bin/postgres", "--version"], "15."),
                           (["mariadbd", "--version"], "MariaDB"),
                           (["redis-server", "--version"], "Redis server"),
                           (["python3", "-c", "import ssl; print(ssl.OPENSSL_VERSION)"],
                            "OpenSSL"),
                           (["openssl", "version"], "OpenSSL")):
            assert text in eng.exec(cid, *argv).stdout
        assert "nginx" in eng.exec(cid, "nginx", "-v").stderr
    finally:
        eng.docker("rm", "-f", cid)
