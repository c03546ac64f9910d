"""TLS recipes and material without servers: choice, refusals, ownership layouts, serials.

Oracles: literal expected values, the file system (modes, owners, bytes), shellcheck for the
generated entrypoint, and `castle certs --check` run as another user (util-linux setpriv).
The real servers are in tests/test_tls_servers.py and tests/test_tls_engine.py.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from castle.cli import app
from castle.errors import WriteRefused
from castle.spec.model import image_recipe
from castle.targets.generate import build
from castle.tls.certs import certs
from castle.tls.recipes import service_tls
from tests import tls_lab

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture()
def example(tmp_path: Path) -> Path:
    """The example spec in a folder of its own."""
    spec = tmp_path / "zones.toml"
    shutil.copy(REPO / "zones.example.toml", spec)
    return spec


def folder_of(spec: Path) -> Path:
    """The example's TLS folder."""
    return spec.parent / "k8s" / "certs"


@pytest.mark.parametrize(("image", "recipe"), [
    ("postgres:16", "postgres"), ("docker.io/library/postgres:16-alpine", "postgres"),
    ("registry.example:5000/team/postgres@sha256:" + "a" * 64, "postgres"),
    ("mysql:8.4", "mysql"), ("mariadb:11", "mariadb"), ("redis:7", "redis"),
    ("valkey/valkey:8", "valkey"), ("nginx:1.27", "nginx"), ("myapp:1.0", "generic"),
    ("postgres-exporter:1", "generic"), ("registry:5000/nginx", "nginx"),
])
def test_recipe_from_the_image(image: str, recipe: str) -> None:
    assert image_recipe(image) == recipe


def test_named_recipe_wins_over_the_image(example: Path) -> None:
    """[services.db.tls] recipe = "generic": today's TLS_* variables, no command."""
    example.write_text(example.read_text().replace('recipe = "postgres"', 'recipe = "generic"'))
    _, plan, _ = build(example, ["compose"])
    db = service_tls(plan, "db")
    assert db is not None and db.server == "generic" and db.command is None
    assert db.env == {"TLS_CA_FILE": "/run/secrets/castle-ca",
                      "TLS_CERT_FILE": "/run/secrets/db-server-cert",
                      "TLS_KEY_FILE": "/run/secrets/db-server-key"}
    example.write_text(example.read_text().replace('recipe = "generic"', 'recipe = "postgres"'))
    _, plan, _ = build(example, ["compose"])
    assert service_tls(plan, "db").command[:3] == ("postgres", "-c", "ssl=on")  # type: ignore[union-attr]


def test_recipe_owns_the_command(example: Path) -> None:
    """A passthrough command on a recipe server: exit 2, file:line, nothing written."""
    text = example.read_text().replace(
        'volumes = ["db-data:/var/lib/postgresql/data"]',
        'volumes = ["db-data:/var/lib/postgresql/data"]\ncommand = ["postgres"]')
    example.write_text(text)
    out = example.parent / "out"
    res = runner.invoke(app, ["generate", str(example), "-o", str(out)])
    assert res.exit_code == 2, res.output
    line = text.splitlines().index('command = ["postgres"]') + 1
    assert f"{example}:{line}: error: services.db.compose.command: the postgres TLS recipe " \
           "writes command for 'db'" in res.output
    assert not out.exists()
    example.write_text(text.replace('recipe = "postgres"', 'recipe = "generic"'))
    assert runner.invoke(app, ["validate", str(example)]).exit_code == 0  # control


def test_user_password_is_passed_through(example: Path) -> None:
    """POSTGRES_PASSWORD_FILE of the user's: castle makes no password of its own."""
    example.write_text(example.read_text().replace(
        'volumes = ["db-data', 'environment = { POSTGRES_PASSWORD_FILE = "/run/pw" }\n'
        'volumes = ["db-data'))
    _, plan, _ = build(example, ["compose"])
    db = service_tls(plan, "db")
    assert db is not None and "POSTGRES_PASSWORD_FILE" not in db.env
    assert all("password" not in s.source for s in db.secrets)
    assert certs(example).ok
    assert not (folder_of(example) / "db-postgres-password.secret").exists()


def test_entrypoint_passes_shellcheck(example: Path) -> None:
    """The generated entrypoint is clean POSIX sh (and shellcheck does look: control)."""
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck missing (scripts/test.sh installs it)")
    out = example.parent / "out"
    assert runner.invoke(app, ["generate", str(example), "-o", str(out)]).exit_code == 0
    script = out / "tls" / "db" / "entrypoint.sh"
    res = subprocess.run(["shellcheck", "-s", "sh", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout
    bad = out / "bad.sh"
    bad.write_text(script.read_text().replace('"$2.castle-tmp"', "$2.castle-tmp"))
    assert subprocess.run(["shellcheck", "-s", "sh", str(bad)], capture_output=True).returncode


# -- generate and the TLS material ------------------------------------------------------------


def test_generate_makes_material_once_and_never_overwrites_a_key(example: Path) -> None:
    out = example.parent / "out"
    first = runner.invoke(app, ["generate", str(example), "-o", str(out)])
    assert first.exit_code == 0, first.output
    assert "TLS:" in first.output and "3 certificates issued" not in first.output
    folder = out / "k8s" / "certs"
    keys = {p.name: p.read_bytes() for p in folder.glob("*.key")}
    keys["db-postgres-password.secret"] = (folder / "db-postgres-password.secret").read_bytes()
    assert set(keys) == {"ca.key", "app-client.key", "db-server.key",
                         "db-postgres-password.secret"}
    again = runner.invoke(app, ["generate", str(example), "-o", str(out)])
    assert "0 files written, 0 certificates issued" in again.output
    for name, data in keys.items():
        assert (folder / name).read_bytes() == data
    check = runner.invoke(app, ["certs", str(example), "-o", str(out), "--check"])
    assert check.exit_code == 0, check.output


def test_generate_refuses_before_writing_compose(example: Path) -> None:
    """Unusable TLS material: exit 2 and no compose.yaml that could not start."""
    out = example.parent / "out"
    folder = out / "k8s" / "certs"
    folder.mkdir(parents=True)
    (folder / "ca.crt").write_text("not a certificate\n")
    res = runner.invoke(app, ["generate", str(example), "-o", str(out)])
    assert res.exit_code == 2, res.output
    assert "ca.crt: not a PEM certificate" in res.output
    assert not (out / "compose.yaml").exists()
    (folder / "ca.crt").unlink()  # control: with the file gone, generate goes through
    assert runner.invoke(app, ["generate", str(example), "-o", str(out)]).exit_code == 0
    assert (out / "compose.yaml").is_file()


def test_only_tls_targets_make_material(example: Path) -> None:
    out = example.parent / "out"
    assert runner.invoke(app, ["generate", str(example), "-o", str(out), "-t",
                               "nftables"]).exit_code == 0
    assert not (out / "k8s" / "certs").exists()
    assert runner.invoke(app, ["generate", str(example), "-o", str(out), "-t",
                               "k8s"]).exit_code == 0
    assert (out / "k8s" / "certs" / "ca.crt").is_file()


# -- serials, expiry wording ------------------------------------------------------------------


def serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_reissue_within_one_second_gets_a_new_serial(example: Path) -> None:
    """A changed certificate for the same key, at once: never the same serial."""
    assert certs(example).ok
    folder = folder_of(example)
    before = {p.name: serial(p) for p in folder.glob("*.crt")}
    assert len(set(before.values())) == len(before)
    example.write_text(example.read_text() + '\n[kubernetes]\nnamespace = "shop2"\n')
    report = certs(example).report
    assert "db-server.crt: issued" in report
    after = {p.name: serial(p) for p in folder.glob("*.crt")}
    for name in ("db-server.crt", "app-client.crt"):
        assert after[name] != before[name], name
    assert len(set(after.values()) | set(before.values())) == len(before) + 2


def ca_with_end(folder: Path, end: dt.datetime) -> None:
    """Replace ca.crt by a certificate of the same CA key and name that ends at `end`."""
    key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    old = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
    builder = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(old.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(end - dt.timedelta(days=30)).not_valid_after(end))
    for ext in old.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    (folder / "ca.crt").write_bytes(builder.sign(key, hashes.SHA256()).public_bytes(
        serialization.Encoding.PEM))


def test_expired_ca_says_expired(example: Path) -> None:
    assert certs(example).ok
    folder = folder_of(example)
    now = dt.datetime.now(dt.UTC)
    ca_with_end(folder, now - dt.timedelta(days=3))
    with pytest.raises(WriteRefused, match=r"ca\.crt: expired on "):
        certs(example)
    ca_with_end(folder, now + dt.timedelta(hours=12))  # control: still valid
    with pytest.raises(WriteRefused, match=r"ca\.crt: expires on "):
        certs(example)


# -- key layouts servers accept ----------------------------------------------------------------


def test_check_accepts_root_group_0640_and_refuses_looser(example: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: chown to root and another group")
    assert certs(example).ok
    key = folder_of(example) / "db-server.key"
    os.chown(key, 0, 999)
    key.chmod(0o640)
    res = certs(example, check=True)
    assert res.ok, res.report
    key.chmod(0o644)  # control: others may read
    res = certs(example, check=True)
    assert not res.ok and "db-server.key is readable by others" in res.report
    os.chown(key, 999, 999)
    key.chmod(0o640)  # control: group-readable but not root's: not a layout servers accept
    assert not certs(example, check=True).ok
    key.chmod(0o600)  # the server user's own, 0600: accepted
    assert certs(example, check=True).ok


def test_check_and_certs_with_a_key_this_user_cannot_read(tmp_path: Path) -> None:
    """As another user: the certificate is checked alone; issuing keeps the key."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as another user")
    home = tls_lab.scratch()  # pytest's own folders are 0700: another user cannot enter
    try:
        as_another_user(home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def as_another_user(home: Path) -> None:
    """The body of the test above, in a folder `nobody` may enter."""
    example = home / "zones.toml"
    shutil.copy(REPO / "zones.example.toml", example)
    folder = folder_of(example)
    assert certs(example).ok
    for path in [example.parent, *example.parent.rglob("*")]:
        os.chown(path, 65534, 65534)
    os.chown(folder / "db-server.key", 0, 0)  # handed to root (and postgres's group)
    (folder / "db-server.key").chmod(0o640)
    env = {**os.environ, "HOME": str(example.parent)}
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                 sys.executable, "-m", "castle", "certs", str(example)]
    res = subprocess.run([*as_nobody, "--check"], capture_output=True, text=True, env=env,
                         cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "db-server.key: not readable by this user, key match not checked" in res.stdout
    before = (folder / "db-server.crt").read_bytes()
    res = subprocess.run(as_nobody, capture_output=True, text=True, env=env, cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (folder / "db-server.crt").read_bytes() == before
    example.write_text(example.read_text() + '\n[kubernetes]\nnamespace = "shop2"\n')
    res = subprocess.run(as_nobody, capture_output=True, text=True, env=env, cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    cert = x509.load_pem_x509_certificate((folder / "db-server.crt").read_bytes())
    key = serialization.load_pem_private_key((folder / "db-server.key").read_bytes(), None)
    assert cert.public_key().public_bytes(  # re-issued for the key it could not read
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == key.public_key().public_bytes(serialization.Encoding.DER,
                                       serialization.PublicFormat.SubjectPublicKeyInfo)
    assert x509.DNSName("db.shop2") in cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    os.chown(folder / "app-client.key", 0, 0)  # control: no cert to take the key from
    (folder / "app-client.crt").unlink()
    res = subprocess.run(as_nobody, capture_output=True, text=True, env=env, cwd=REPO)
    assert res.returncode == 2 and "app-client.key: cannot read it" in res.stderr, res.stderr


def test_init_seed_uses_the_postgres_recipe(tmp_path: Path) -> None:
    """castle init's stanza is a working one: db gets ssl=on and cert auth for app only."""
    assert runner.invoke(app, ["init", str(tmp_path)]).exit_code == 0
    spec = tmp_path / "zones.toml"
    assert "tls_env" not in spec.read_text()
    _, plan, _ = build(spec, ["compose"])
    db, client = service_tls(plan, "db"), service_tls(plan, "app")
    assert db is not None and client is not None
    assert db.server == "postgres" and "ssl=on" in (db.command or ())
    hba = next(c for c in db.configs if c.target.endswith("pg_hba.conf")).text
    assert [line.split() for line in hba.splitlines() if line.startswith("host")] == [
        ["hostssl", "all", "app", "all", "cert"]]
    assert client.env["PGSSLMODE"] == "verify-full" and client.env["PGUSER"] == "app"


def test_user_variables_win_and_tls_env_renames_the_generic_ones(example: Path) -> None:
    """A variable the user sets keeps its value over the recipe's; `tls_env` replaces the
    generic DB_TLS_* names; a literal `$` reaches compose escaped as `$$`."""
    text = example.read_text().replace(
        'environment = { DB_HOST = "db", DB_PORT = "5432" }',
        'environment = { DB_HOST = "db", PGHOST = "db.shop" }').replace(
        'listen = [8000]\n', 'listen = [8000]\ntls_env = { DB_CERT = "client_cert:db", '
        'DB_KEY = "client_key:db", DB_CA = "ca", DB_SSL = "=$on" }\n', 1)
    example.write_text(text)
    _, plan, outputs = build(example, ["compose"])
    env = service_tls(plan, "app").env  # type: ignore[union-attr]
    assert "PGHOST" not in env and env["PGSSLMODE"] == "verify-full"
    assert not any(k.startswith("DB_TLS_") for k in env)
    assert env["DB_CERT"] == "/run/secrets/db-client-cert" and env["DB_SSL"] == "$on"
    compose = yaml.safe_load(next(o for o in outputs if o.path == "compose.yaml").content)
    written = compose["services"]["app"]["environment"]
    assert written["DB_SSL"] == "$$on" and written["PGHOST"] == "db.shop"
    assert written["DB_CERT"] == "/run/secrets/db-client-cert"
    assert not any(k.startswith("DB_TLS_") for k in written)


def test_recipe_files_of_a_dropped_recipe_are_removed(example: Path) -> None:
    """tls/db/* are castle's files: a spec that no longer needs them removes them."""
    out = example.parent / "out"
    assert runner.invoke(app, ["generate", str(example), "-o", str(out)]).exit_code == 0
    assert sorted(p.name for p in (out / "tls" / "db").iterdir()) == [
        "castle-roles.sql", "entrypoint.sh", "pg_hba.conf"]
    mine = out / "tls" / "db" / "notes.txt"
    mine.write_text("my own notes\n")  # not castle's: never removed
    example.write_text(example.read_text().replace('recipe = "postgres"', 'recipe = "generic"'))
    res = runner.invoke(app, ["generate", str(example), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "removed tls/db/castle-roles.sql, tls/db/entrypoint.sh, tls/db/pg_hba.conf" in res.output
    assert sorted(p.name for p in (out / "tls" / "db").iterdir()) == ["notes.txt"]


def test_a_plain_flow_into_a_recipe_server_is_warned(example: Path) -> None:
    example.write_text(example.read_text() + '\n[[flows]]\nfrom = "admin"\nto = "db"\n'
                       'waiver = "reporting"\n')
    res = runner.invoke(app, ["validate", str(example)])
    assert res.exit_code == 0, res.output
    assert "the postgres TLS recipe makes 'db' TLS-only with client certificates, but flows from " \
           "admin reach it without tls" in res.output
    example.write_text(example.read_text() + "tls = true\n")  # control
    assert "TLS-only" not in runner.invoke(app, ["validate", str(example)]).output
