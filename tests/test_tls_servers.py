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
from castle.targets.generate import build
from castle.tls.recipes import service_tls
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


# -- MariaDB ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mariadb(lab: Lab) -> Iterator[Box]:
    """my: castle's entrypoint -> (as the image's entrypoint does) mariadbd as mysql."""
    box = lab.box("my")
    entry = box.rewrite_file("/etc/castle/entrypoint.sh")
    init = box.rewrite_file("/docker-entrypoint-initdb.d/castle-tls.sql")
    bin_dir = lab.folder / "bin-my"
    tls_lab.user_shim(bin_dir, "docker-entrypoint.sh", "mysql", prepend="mariadbd --no-defaults")
    data = lab.folder / "my-data"
    inst = in_ns(lab.ns, ["mariadb-install-db", "--no-defaults", f"--datadir={data}",
                          "--user=mysql", "--skip-test-db"])
    assert inst.returncode == 0, inst.stdout + inst.stderr
    run = lab.folder / "my-run"
    run.mkdir()
    shutil.chown(run, "mysql", "mysql")
    # the image's entrypoint runs initdb.d once; --init-file runs the same SQL at start
    argv = ["sh", str(entry), *box.command(), f"--datadir={data}", "--bind-address=127.0.0.1",
            "--port=3306", f"--socket={run}/mysqld.sock", f"--pid-file={run}/mysqld.pid",
            f"--init-file={init}"]
    log = lab.folder / "mariadb.log"
    proc = tls_lab.start(lab.ns, argv, log, env={"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/bin"})
    try:
        tls_lab.wait_port(lab.ns, 3306, proc, log)
        yield box
    finally:
        tls_lab.stop(proc)


def mariadb_client(lab: Lab, cnf: Path, *extra: str) -> tuple[bool, str]:
    """The mariadb client with an option file (castle's, or a variant); (succeeded, output)."""
    res = in_ns(lab.ns, ["mariadb", f"--defaults-extra-file={cnf}", *extra, "-N", "-B", "-e",
                         "SELECT CURRENT_USER(), DATABASE(), VARIABLE_VALUE FROM "
                         "information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'SSL_CIPHER'"])
    return res.returncode == 0, res.stdout + res.stderr


def test_mariadb_lets_app_in_with_its_option_file(lab: Lab, mariadb: Box) -> None:
    """castle's [client] file (host=my, verify the server's name, app's certificate) gets in."""
    client = lab.box("app")
    cnf = client.rewrite_file("/etc/mysql/conf.d/castle-my.cnf")
    ok, out = mariadb_client(lab, cnf)
    assert ok, out
    user, database, cipher = out.strip().split("\t")
    assert (user, database) == ("app@%", "app") and cipher, out


def test_mariadb_refuses_everyone_else(lab: Lab, mariadb: Box) -> None:
    """No certificate, another CA's, admin's certificate, plaintext: refused."""
    client = lab.box("app")
    cnf = client.rewrite_file("/etc/mysql/conf.d/castle-my.cnf")
    text = cnf.read_text()
    cert = client.path("/run/secrets/my-client-cert")
    key = client.path("/run/secrets/my-client-key")
    admin = lab.box("admin")

    def variant(name: str, new_cert: str | None, new_key: str | None) -> Path:
        lines = [line for line in text.splitlines()
                 if not line.startswith(("ssl-cert=", "ssl-key="))]
        if new_cert and new_key:
            lines.insert(lines.index("[client]") + 1, f"ssl-cert={new_cert}\nssl-key={new_key}")
        path = lab.folder / f"{name}.cnf"
        path.write_text("\n".join(lines) + "\n")
        return path

    cases = {
        "no certificate": (variant("nocert", None, None), "Access denied for user 'app'"),
        "another CA": (variant("foreign", str(lab.foreign_cert), str(lab.foreign_key)), ""),
        "admin's certificate": (variant("admin", str(admin.path(
            "/run/secrets/probe-client-cert")), str(admin.path(
                "/run/secrets/probe-client-key"))), "Access denied for user 'app'"),
    }
    for why, (path, words) in cases.items():
        ok, out = mariadb_client(lab, path)
        assert not ok, f"{why}: let in"
        assert words in out, f"{why}: {out}"
    plain = in_ns(lab.ns, ["mariadb", "--no-defaults", "--protocol=TCP", "-h", "my", "-P",
                           "3306", "-u", "app", "--skip-ssl", "-e", "SELECT 1"])
    assert plain.returncode != 0, plain
    assert "Access denied" in plain.stderr or "insecure transport" in plain.stderr, plain
    assert variant("control", str(cert), str(key)).read_text() != text  # variants differ
    ok, out = mariadb_client(lab, variant("control2", str(cert), str(key)))
    assert ok, out  # control: a variant with app's own files gets in


# -- Redis --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis(lab: Lab) -> Iterator[Box]:
    """cache: castle's entrypoint -> redis-server as redis, TLS port only."""
    box = lab.box("cache")
    entry = box.rewrite_file("/etc/castle/entrypoint.sh")
    bin_dir = lab.folder / "bin-cache"
    tls_lab.user_shim(bin_dir, "docker-entrypoint.sh", "redis")
    data = lab.folder / "redis-data"
    data.mkdir()
    shutil.chown(data, "redis", "redis")
    argv = ["sh", str(entry), *box.command(), "--bind", "127.0.0.1", "--dir", str(data),
            "--save", ""]
    log = lab.folder / "redis.log"
    proc = tls_lab.start(lab.ns, argv, log, env={"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/bin"})
    try:
        tls_lab.wait_port(lab.ns, 6379, proc, log)
        yield box
    finally:
        tls_lab.stop(proc)


def redis_cli(lab: Lab, args: list[str]) -> tuple[bool, str]:
    """redis-cli PING; (answered PONG, output)."""
    res = in_ns(lab.ns, ["redis-cli", *args, "PING"])
    return res.stdout.strip() == "PONG", res.stdout + res.stderr


def test_redis_lets_app_in_and_refuses_no_cert_foreign_ca_plaintext(
        lab: Lab, redis: Box) -> None:
    """castle's documented redis-cli flags get in; the rest does not."""
    client = lab.box("app")
    args = [client.rewrite(a) for a in wiring(lab, "app").client_args["cache"]]
    assert args[:5] == ["--tls", "-h", "cache", "-p", "6379"]
    ok, out = redis_cli(lab, args)
    assert ok, out
    ca = args[args.index("--cacert") + 1]
    for why, case in {
        "no certificate": ["--tls", "-h", "cache", "-p", "6379", "--cacert", ca],
        "another CA": ["--tls", "-h", "cache", "-p", "6379", "--cacert", ca,
                       "--cert", str(lab.foreign_cert), "--key", str(lab.foreign_key)],
        "plaintext": ["-h", "cache", "-p", "6379"],
    }.items():
        ok, out = redis_cli(lab, case)
        assert not ok, f"{why}: let in ({out})"


def test_redis_cannot_tell_services_apart(lab: Lab, redis: Box) -> None:
    """Redis 7 maps no certificate to a user: any castle certificate passes (docs/tls.md)."""
    admin = lab.box("admin")
    ok, out = redis_cli(lab, [
        "--tls", "-h", "cache", "-p", "6379",
        "--cacert", str(admin.path("/run/secrets/castle-ca")),
        "--cert", str(admin.path("/run/secrets/probe-client-cert")),
        "--key", str(admin.path("/run/secrets/probe-client-key"))])
    assert ok, out


# -- nginx --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nginx(lab: Lab) -> Iterator[Box]:
    """web: nginx with castle's conf.d file, included as the image's nginx.conf does."""
    box = lab.box("web")
    conf = box.rewrite_file("/etc/nginx/conf.d/castle-tls-web.conf")
    main = box.path("/etc/nginx/nginx.conf")  # a stand-in for the image's own nginx.conf
    main.write_text(f"daemon off;\npid {box.path('/nginx.pid')};\nerror_log stderr;\n"
                    f"events {{}}\nhttp {{\n    access_log off;\n"
                    f"    include {conf.parent}/*.conf;\n}}\n")
    log = lab.folder / "nginx.log"
    proc = tls_lab.start(lab.ns, ["nginx", "-p", str(box.root), "-c", str(main), "-e",
                                  "stderr"], log)
    try:
        tls_lab.wait_port(lab.ns, 8443, proc, log)
        yield box
    finally:
        tls_lab.stop(proc)


def curl(lab: Lab, args: list[str]) -> str:
    """The HTTP status curl saw ('000' when TLS failed)."""
    res = in_ns(lab.ns, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time",
                         "10", *args])
    return res.stdout.strip()


def test_nginx_lets_app_in_and_refuses_everyone_else(lab: Lab, nginx: Box) -> None:
    """app's documented curl flags: 200; no certificate, another CA's: 400; admin's: 403."""
    client = lab.box("app")
    args = [client.rewrite(a) for a in wiring(lab, "app").client_args["web"]]
    assert args[-1] == "https://web:8443/"
    assert curl(lab, args) == "200"
    ca = args[args.index("--cacert") + 1]
    admin = lab.box("admin")
    assert curl(lab, ["--cacert", ca, "https://web:8443/"]) == "400"
    assert curl(lab, ["--cacert", ca, "--cert", str(lab.foreign_cert), "--key",
                      str(lab.foreign_key), "https://web:8443/"]) == "400"
    assert curl(lab, ["--cacert", ca, "--cert", str(admin.path("/run/secrets/probe-client-cert")),
                      "--key", str(admin.path("/run/secrets/probe-client-key")),
                      "https://web:8443/"]) == "403"
    assert curl(lab, ["http://web:8443/"]) == "400"  # plaintext to the TLS port
