"""The example stack on a real Docker Engine: the README's two commands give mutual TLS.

`castle generate zones.example.toml -o out`, then `docker compose up`: nothing else. The
oracle is a real dockerd (tests/engine.py) running a postgres:16 built here the way the
official image is (Debian's postgresql-15 behind docker-library's docker-entrypoint.sh,
tests/data/postgres-entrypoint/), and libpq inside the app container with only the
environment compose.yaml gives it. app's certificate gets in; a certificate of castle's
own CA for admin is refused, and so is app without its certificate.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from castle.cli import app
from tests.engine import Engine

pytestmark = pytest.mark.engine
REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = REPO / "tests" / "data" / "postgres-entrypoint" / "docker-entrypoint.sh"
# postgres:16 as the official image is made, from Debian's packages (no registry here)
DOCKERFILE = """\
FROM castle-servers:1
COPY docker-entrypoint.sh gosu /usr/local/bin/
RUN chmod 755 /usr/local/bin/docker-entrypoint.sh /usr/local/bin/gosu \\
 && mkdir -p /docker-entrypoint-initdb.d /var/lib/postgresql/data \\
 && chown -R postgres:postgres /var/lib/postgresql \\
 && sed -ri "s!^#?(listen_addresses)\\s*=\\s*\\S+.*!\\1 = '*'!" \\
      /usr/share/postgresql/15/postgresql.conf.sample
ENV PATH=/usr/local/bin:/usr/lib/postgresql/15/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    PG_MAJOR=15 PGDATA=/var/lib/postgresql/data LANG=C.UTF-8
ENTRYPOINT ["docker-entrypoint.sh"]
STOPSIGNAL SIGINT
CMD ["postgres"]
"""
POSTGRES_IMAGE = "castle-postgres:16"  # what DOCKERFILE builds; tagged postgres:16 before use
GOSU = ('#!/bin/sh\nuser=$1\nshift\n'
        'exec setpriv --reuid="$user" --regid="$user" --init-groups "$@"\n')


def build_images(eng: Engine, folder: Path) -> None:
    """postgres:16 (official-like), myapp:1.0 and admin-panel:1.0 (with psql), nginx:1.27.

    The server is built under a tag of its own and tagged postgres:16 on every call: other
    tests of the session tag the busybox probe as postgres:16 (tests/engine_stack.py).
    """
    base = eng.server_image()
    ctx = folder / "postgres-image"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    shutil.copy(ENTRYPOINT, ctx / "docker-entrypoint.sh")
    (ctx / "gosu").write_text(GOSU)
    if eng.docker("image", "inspect", POSTGRES_IMAGE, check=False).returncode != 0:
        eng.docker("build", "-q", "-t", POSTGRES_IMAGE, str(ctx), timeout=300)
    eng.docker("tag", POSTGRES_IMAGE, "postgres:16")
    eng.docker("tag", base, "myapp:1.0")
    eng.docker("tag", base, "admin-panel:1.0")
    eng.tag_probe("nginx:1.27")


def admin_cert(certs: Path) -> tuple[bytes, bytes]:
    """A client certificate for admin signed by castle's own CA (what a stolen admin holds)."""
    ca = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "castle"),
                                     x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME,
                                                        "shop"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, "admin")]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("admin")]), False)
            .sign(ca_key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def test_example_stack_up_gives_mutual_tls(docker_engine: Engine, tmp_path: Path) -> None:
    """generate, compose up: db serves TLS to app's certificate only."""
    eng = docker_engine
    build_images(eng, tmp_path)
    spec = tmp_path / "zones.example.toml"
    shutil.copy(REPO / "zones.example.toml", spec)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["generate", str(spec), "-o", str(out)])  # README, step 1
    assert res.exit_code == 0, res.output
    eng.up(out, "shop")  # README, step 2: docker compose -f out/compose.yaml up
    try:
        app_id, db_id = eng.container("shop", "app"), eng.container("shop", "db")
        query = "SELECT current_user, s.ssl FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()"
        deadline = time.monotonic() + 120
        while True:
            got = eng.exec(app_id, "psql", "-XAtc", query, check=False)
            if got.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        logs = eng.docker("logs", db_id, check=False)
        assert got.returncode == 0, got.stderr + logs.stdout + logs.stderr
        assert got.stdout.strip() == "app|t"
        assert eng.exec(db_id, "psql", "-U", "postgres", "-XAtc", "SHOW ssl",
                        user="postgres").stdout.strip() == "on"
        # admin's certificate, from castle's own CA, used from where db is reachable
        cert, key = admin_cert(out / "k8s" / "certs")
        eng.docker("exec", "-i", app_id, "sh", "-c", "cat > /tmp/admin.crt", input=cert.decode())
        eng.docker("exec", "-i", app_id, "sh", "-c",
                   "umask 077 && cat > /tmp/admin.key", input=key.decode())
        for env, words in (
            (["PGSSLCERT=/tmp/admin.crt", "PGSSLKEY=/tmp/admin.key"],
             'certificate authentication failed for user "app"'),
            (["PGSSLCERT=/tmp/admin.crt", "PGSSLKEY=/tmp/admin.key", "PGUSER=admin"],
             'no pg_hba.conf entry for host'),
            (["PGSSLCERT=/nonexistent", "PGSSLKEY=/nonexistent"],
             "connection requires a valid client certificate"),
            (["PGSSLMODE=disable"], "no encryption"),
        ):
            flags = [part for e in env for part in ("-e", e)]
            refused = eng.docker("exec", *flags, app_id, "psql", "-XAtc", "SELECT 1",
                                 check=False)
            assert refused.returncode != 0, env
            assert words in refused.stderr, (env, refused.stderr)
    finally:
        eng.down(out, "shop")


def test_file_secrets_keep_the_host_owner_and_mode(docker_engine: Engine, tmp_path: Path) -> None:
    """Why castle's entrypoint copies keys: compose ignores uid/gid/mode on file secrets.

    Control: the same long syntax on a `content:` config (copied in) is applied.
    """
    eng = docker_engine
    eng.tag_probe("castle-secret-probe:1")
    key = tmp_path / "server.key"
    key.write_text("not really a key\n")
    key.chmod(0o600)
    (tmp_path / "compose.yaml").write_text("""\
services:
  s:
    image: castle-secret-probe:1
    network_mode: none
    secrets:
      - {source: from-file, target: from-file, uid: "999", gid: "999", mode: 0440}
    configs:
      - {source: inline, target: /run/inline, uid: "999", gid: "999", mode: 0440}
secrets:
  from-file: {file: ./server.key}
configs:
  inline: {content: "inline config"}
""")
    eng.up(tmp_path, "secretprobe")
    try:
        cid = eng.container("secretprobe", "s")
        seen = eng.exec(cid, "stat", "-c", "%n %u:%g %a", "/run/secrets/from-file",
                        "/run/inline").stdout.split("\n")
        assert seen[0] == "/run/secrets/from-file 0:0 600", seen
        assert seen[1] == "/run/inline 999:999 440", seen
    finally:
        eng.down(tmp_path, "secretprobe")
