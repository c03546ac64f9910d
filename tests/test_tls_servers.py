"""The TLS recipes against real servers and real clients from Debian's packages.

castle generate writes compose.yaml, the recipe files and the TLS material; each server
then runs with exactly the command, environment and files compose.yaml gives it (paths
moved below a folder of its own, tests/tls_lab.py), in a network namespace of the test's,
behind castle's own entrypoint (which hands the private files to the server's user). The
oracles are the servers and clients themselves: PostgreSQL 15 with psql/libpq behind the
official image's docker-entrypoint.sh, MariaDB with the mariadb client, Redis with
redis-cli --tls, nginx with curl. The spec's source gets in over verified mutual TLS; no
certificate, another CA's, another service's (where the server can tell) and plaintext
are refused.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from castle.cli import app
from castle.generate import build
from castle.tls_recipes import service_tls
from tests import tls_lab
from tests.test_certs import foreign_leaf
from tests.tls_lab import Box, in_ns

pytestmark = pytest.mark.netns
REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = REPO / "tests" / "data" / "postgres-entrypoint" / "docker-entrypoint.sh"
PG_BIN = "/usr/lib/postgresql/15/bin"

SPEC = """\
version = 1
[stack]
name = "shop"
[[tiers]]
name = "backend"
[[tiers]]
name = "data"
[services.app]
tier = "backend"
image = "myapp:1.0"
[services.admin]
tier = "backend"
image = "admin-panel:1.0"
[services.probe]
tier = "data"
image = "probe:1.0"
listen = [9000]
[services.db]
tier = "data"
image = "postgres:15"
listen = [5432]
[services.my]
tier = "data"
image = "mariadb:10.11"
listen = [3306]
[services.cache]
tier = "data"
image = "redis:7.0"
listen = [6379]
[services.web]
tier = "data"
image = "nginx:1.22"
listen = [8443]
[[flows]]
from = "app"
to = ["db", "my", "cache", "web"]
tls = true
[[flows]]
from = "admin"          # admin holds a certificate of castle's CA too, but not for these
to = "probe"
tls = true
"""
NAMES = ["app", "admin", "probe", "db", "my", "cache", "web"]


@dataclass
class Lab:
    """The generated stack, one box per service, a namespace, and a foreign CA's client."""

    folder: Path
    out: Path
    project: dict[str, Any]
    ns: str
    foreign_cert: Path
    foreign_key: Path

    def box(self, service: str) -> Box:
        """A fresh file system view of one service."""
        root = self.folder / "boxes" / service
        shutil.rmtree(root, ignore_errors=True)
        return Box(self.out, self.project, service, root)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """castle generate once; the namespace lives for the module."""
    reason = tls_lab.skip_reason(f"{PG_BIN}/postgres", "psql", "mariadbd", "mariadb",
                                 "mariadb-install-db", "redis-server", "redis-cli", "nginx",
                                 "curl", "setpriv", "bash")
    if reason:
        pytest.skip(reason)
    folder = tls_lab.scratch()
    try:
        spec = folder / "zones.toml"
        spec.write_text(SPEC)
        out = folder / "out"
        res = CliRunner().invoke(app, ["generate", str(spec), "-o", str(out), "-t", "compose"])
        assert res.exit_code == 0, res.output
        _, cert, key = foreign_leaf("app", ExtendedKeyUsageOID.CLIENT_AUTH)
        (folder / "foreign.crt").write_bytes(cert)
        (folder / "foreign.key").write_bytes(key)
        (folder / "foreign.key").chmod(0o600)
        with tls_lab.netns(NAMES) as ns:
            yield Lab(folder, out, tls_lab.load_compose(out), ns, folder / "foreign.crt",
                      folder / "foreign.key")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def wiring(lab: Lab, service: str) -> Any:
    """castle's own TLS wiring of a service (for the documented client flags)."""
    _, plan, _ = build(lab.folder / "zones.toml", ["compose"])
    return service_tls(plan, service)


# -- PostgreSQL behind the official image's entrypoint ----------------------------------------


@pytest.fixture(scope="module")
def postgres(lab: Lab) -> Iterator[Box]:
    """db: castle's entrypoint -> the official docker-entrypoint.sh -> postgres, as postgres."""
    box = lab.box("db")
    entry = box.rewrite_file("/etc/castle/entrypoint.sh")
    bin_dir = lab.folder / "bin-db"
    tls_lab.gosu_shim(bin_dir)
    official = bin_dir / "docker-entrypoint.sh"
    official.write_text(ENTRYPOINT.read_text().replace(
        "/docker-entrypoint-initdb.d", str(box.path("/docker-entrypoint-initdb.d"))))
    official.chmod(0o755)
    box.path("/var/lib/postgresql").mkdir(parents=True)  # as the image has it
    box.path("/var/lib/postgresql").chmod(0o755)
    sock = lab.folder / "pg-socket"
    sock.mkdir()
    env = {"PATH": f"{bin_dir}:{PG_BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "PG_MAJOR": "15",
           "PGDATA": str(box.path("/var/lib/postgresql/data")), "LANG": "C.UTF-8", **box.env()}
    # the socket folder the image would have, private to this mount namespace
    argv = ["sh", "-c", 'mount --bind "$0" /var/run/postgresql && exec "$@"', str(sock),
            "sh", str(entry), *box.command()]
    log = lab.folder / "postgres.log"
    proc = tls_lab.start(lab.ns, argv, log, env=env)
    try:
        tls_lab.wait_port(lab.ns, 5432, proc, log)
        yield box
    finally:
        tls_lab.stop(proc)


def psql(lab: Lab, env: dict[str, str], sql: str) -> tuple[bool, str]:
    """Run psql in the namespace with libpq's variables only; (succeeded, output)."""
    full = {"PATH": "/usr/bin:/bin", **env}
    res = in_ns(lab.ns, ["psql", "-XAt", "-c", sql], env=full)
    return res.returncode == 0, res.stdout + res.stderr


def test_postgres_entrypoint_serves_tls_and_lets_app_in(lab: Lab, postgres: Box) -> None:
    """The app's own environment (PGHOST=db, verify-full, its certificate) gets in."""
    env = lab.box("app").env()
    assert env["PGSSLMODE"] == "verify-full" and env["PGHOST"] == "db"
    ok, out = psql(lab, env, "SHOW ssl")
    assert ok and out.strip() == "on", out
    ok, out = psql(lab, env, "SELECT current_user, current_database(), s.ssl, s.client_dn "
                   "FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()")
    assert ok, out
    assert out.strip() == "app|app|t|/O=castle/OU=shop/CN=app", out
    log = (lab.folder / "postgres.log").read_text()
    assert "PostgreSQL init process complete" in log  # the official entrypoint really ran


def test_postgres_refuses_everyone_else(lab: Lab, postgres: Box) -> None:
    """No certificate, another CA's, admin's certificate, plaintext, the superuser's password."""
    env = lab.box("app").env()
    admin = lab.box("admin")
    expect = {  # the server's own words for each refusal
        "no certificate": "connection requires a valid client certificate",
        "another CA": "unknown ca",
        "admin's certificate as app": 'certificate authentication failed for user "app"',
        "admin's certificate as admin": 'no pg_hba.conf entry for host "127.0.0.1", user "admin"',
        "plaintext": "no encryption",
        "superuser password over TLS": 'user "postgres", database "postgres", SSL encryption',
    }
    cases = {
        "no certificate": env | {"PGSSLCERT": "/nonexistent.crt", "PGSSLKEY": "/nonexistent.key"},
        "another CA": env | {"PGSSLCERT": str(lab.foreign_cert),
                             "PGSSLKEY": str(lab.foreign_key)},
        "admin's certificate as app": env | {
            "PGSSLCERT": str(admin.path("/run/secrets/probe-client-cert")),
            "PGSSLKEY": str(admin.path("/run/secrets/probe-client-key"))},
        "admin's certificate as admin": env | {
            "PGUSER": "admin", "PGDATABASE": "postgres",
            "PGSSLCERT": str(admin.path("/run/secrets/probe-client-cert")),
            "PGSSLKEY": str(admin.path("/run/secrets/probe-client-key"))},
        "plaintext": env | {"PGSSLMODE": "disable"},
        "superuser password over TLS": env | {
            "PGUSER": "postgres", "PGDATABASE": "postgres", "PGPASSWORD": postgres.path(
                "/run/secrets/db-postgres-password").read_text()},
    }
    for why, case in cases.items():
        ok, out = psql(lab, case, "SELECT 1")
        assert not ok, f"{why}: let in"
        assert expect[why] in out, f"{why}: {out}"
    ok, _ = psql(lab, env, "SELECT 1")
    assert ok  # control: the same environment, unchanged, still gets in


def test_postgres_cannot_read_the_key_without_castles_entrypoint(lab: Lab, postgres: Box) -> None:
    """Negative control: the key as compose mounts it (host owner, 0600) is refused."""
    staged = postgres.path("/run/castle-secrets/db-server-key")
    assert staged.stat().st_mode & 0o777 == 0o600 and staged.stat().st_uid == 0
    copied = postgres.path("/run/secrets/db-server-key")
    assert copied.stat().st_mode & 0o777 == 0o640 and copied.stat().st_uid == 0
    data = lab.folder / "pg-control"
    data.mkdir(mode=0o700)
    shutil.chown(data, "postgres", "postgres")
    init = in_ns(lab.ns, ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
                          f"{PG_BIN}/initdb", "-D", str(data)])
    assert init.returncode == 0, init.stderr
    res = in_ns(lab.ns, ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
                         f"{PG_BIN}/postgres", "-D", str(data), "-p", "5499", "-k", str(data),
                         *[postgres.rewrite(c.replace("/run/secrets/", "/run/castle-secrets/")
                                            if "key" in c else c)
                           for c in postgres.spec["command"][1:]]])
    assert res.returncode != 0
    assert "private key file" in res.stderr, res.stderr
