"""castle certs: a private CA and leaf certificates, checked with openssl and cryptography.

Oracles: `openssl verify` (another implementation of X.509 path validation) and the
cryptography API reading the files back; nothing here recomputes names with castle's code.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from castle.cli import app
from castle.errors import WriteRefused
from castle.tls.certs import certs

REPO = Path(__file__).resolve().parents[1]
OPENSSL = shutil.which("openssl")
LEAVES = ["app-client", "db-server"]


@pytest.fixture()
def spec(tmp_path: Path) -> Path:
    """The example spec, copied where castle may write beside it."""
    path = tmp_path / "zones.toml"
    shutil.copy(REPO / "zones.example.toml", path)
    return path


def tls_dir(spec: Path) -> Path:
    """Where the spec's certificates go: [tls].dir, read from the TOML itself."""
    import tomllib

    data = tomllib.loads(spec.read_text())
    folder = data.get("tls", {}).get("dir")
    if folder is None:  # the model's default: find the one folder castle made that holds ca.crt
        found = sorted(spec.parent.rglob("ca.crt"))
        assert len(found) == 1, found
        return found[0].parent
    return spec.parent / folder


def load(path: Path) -> x509.Certificate:
    """A certificate read with cryptography."""
    return x509.load_pem_x509_certificate(path.read_bytes())


def snapshot(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    """Bytes, mtime and mode of every file in the folder."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode & 0o777)
            for p in sorted(folder.iterdir())}


def openssl_verify(ca: Path, leaf: Path, purpose: str | None = None) -> bool:
    """`openssl verify` accepts leaf under ca (optionally for an sslclient/sslserver purpose)."""
    assert OPENSSL, "openssl is installed on this machine's kind (VERIFY.md)"
    cmd = [OPENSSL, "verify", "-CAfile", str(ca)]
    if purpose:
        cmd += ["-purpose", purpose]
    proc = subprocess.run([*cmd, str(leaf)], capture_output=True, text=True, timeout=30)
    return proc.returncode == 0


def foreign_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A CA castle never saw, made here with cryptography."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "elsewhere CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def foreign_leaf(name: str, usage: x509.ObjectIdentifier) -> tuple[bytes, bytes, bytes]:
    """(ca pem, cert pem, key pem) of a leaf for `name` signed by a foreign CA."""
    ca_key, ca = foreign_ca()
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(8)
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return (ca.public_bytes(serialization.Encoding.PEM),
            cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


# -- issuing ---------------------------------------------------------------------------------


def test_example_issues_a_ca_and_one_leaf_per_tls_end(spec: Path) -> None:
    result = certs(spec, None, None, False)
    assert result.ok, result.report
    folder = tls_dir(spec)
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([".gitignore", "ca.crt", "ca.key", "app-client.crt", "app-client.key",
                            "db-server.crt", "db-server.key", "db-postgres-password.secret"])
    ca = load(folder / "ca.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    for leaf in LEAVES:
        assert openssl_verify(folder / "ca.crt", folder / f"{leaf}.crt"), leaf
        cert = load(folder / f"{leaf}.crt")
        cert.verify_directly_issued_by(ca)
        key = serialization.load_pem_private_key((folder / f"{leaf}.key").read_bytes(), None)
        assert cert.public_key() == key.public_key()
        days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
        assert 364 <= days <= 366  # [tls].days default
    # SANs: compose name, then the Kubernetes service names in namespace "shop".
    for svc, role in (("db", "server"), ("app", "client")):
        cert = load(folder / f"{svc}-{role}.crt")
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [
            svc, f"{svc}.shop", f"{svc}.shop.svc", f"{svc}.shop.svc.cluster.local"]
        eku = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        want = {"server": ExtendedKeyUsageOID.SERVER_AUTH,
                "client": ExtendedKeyUsageOID.CLIENT_AUTH}[role]
        assert eku == [want]
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert cn == svc
    # Usage as openssl sees it: a server certificate is not a client one and vice versa.
    assert openssl_verify(folder / "ca.crt", folder / "db-server.crt", "sslserver")
    assert not openssl_verify(folder / "ca.crt", folder / "db-server.crt", "sslclient")
    assert openssl_verify(folder / "ca.crt", folder / "app-client.crt", "sslclient")
    assert not openssl_verify(folder / "ca.crt", folder / "app-client.crt", "sslserver")
    assert "*.key" in (folder / ".gitignore").read_text().splitlines()
    assert ".gitignore" in result.report and "BEGIN" not in result.report
    assert "PRIVATE" not in result.report


def test_openssl_rejects_a_leaf_under_another_ca(spec: Path, tmp_path: Path) -> None:
    """Negative control for the verify oracle."""
    certs(spec, None, None, False)
    _, other = foreign_ca()
    other_pem = tmp_path / "other.crt"
    other_pem.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    assert not openssl_verify(other_pem, tls_dir(spec) / "db-server.crt")


def test_keys_are_created_0600_whatever_the_umask(spec: Path) -> None:
    old = os.umask(0)
    try:
        certs(spec, None, None, False)
    finally:
        os.umask(old)
    folder = tls_dir(spec)
    for name in ["ca.key", "app-client.key", "db-server.key"]:
        assert (folder / name).stat().st_mode & 0o777 == 0o600, name
    assert (folder / "ca.crt").stat().st_mode & 0o777 == 0o644


def test_second_run_changes_nothing(spec: Path) -> None:
    certs(spec, None, None, False)
    before = snapshot(tls_dir(spec))
    again = certs(spec, None, None, False)
    assert again.ok
    assert snapshot(tls_dir(spec)) == before
    assert "0 files written" in again.report


def test_out_option_and_spec_folder_default(spec: Path, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere"
    certs(spec, out, None, False)
    assert sorted(out.rglob("ca.crt")) and not sorted(spec.parent.glob("*/ca.crt"))


def test_out_may_be_a_link_but_nothing_below_it(spec: Path, tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert certs(spec, tmp_path / "link", None, False).ok  # -o itself may be a link
    files = sorted(p.relative_to(real).as_posix() for p in real.rglob("*") if p.is_file())
    assert files == sorted(f"k8s/certs/{n}" for n in [
        ".gitignore", "ca.crt", "ca.key", "app-client.crt", "app-client.key", "db-server.crt",
        "db-server.key", "db-postgres-password.secret"])  # and no temporary file is left behind
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "k8s").symlink_to(elsewhere)  # a link inside the output folder: refused
    with pytest.raises(WriteRefused, match="k8s: is a symbolic link"):
        certs(spec, out, None, False)
    assert not list(elsewhere.iterdir())


def test_no_tls_flow_writes_nothing(tmp_path: Path) -> None:
    text = (REPO / "zones.example.toml").read_text()
    text = text.replace("tls = true", "tls = false")
    text = "\n".join(line for line in text.splitlines() if not line.startswith("tls_env"))
    path = tmp_path / "zones.toml"
    path.write_text(text)
    result = certs(path, None, None, False)
    assert result.ok and "nothing written" in result.report
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["zones.toml"]


# -- --check ---------------------------------------------------------------------------------


def test_check_fresh_missing_and_expiring(spec: Path) -> None:
    assert not certs(spec, None, None, True).ok  # nothing issued yet
    certs(spec, None, None, False)
    before = snapshot(tls_dir(spec))
    fresh = certs(spec, None, None, True)
    assert fresh.ok, fresh.report
    late = certs(spec, None, 400, True)  # 365-day leaves expire within 400 days
    assert not late.ok and "within 400 days" in late.report
    assert certs(spec, None, 364, True).ok
    (tls_dir(spec) / "db-server.crt").unlink()
    missing = certs(spec, None, None, True)
    assert not missing.ok and "db-server.crt: missing" in missing.report
    del before["db-server.crt"]
    assert snapshot(tls_dir(spec)) == before  # --check wrote nothing


def test_check_wrong_names_then_reissue_keeps_the_key(spec: Path) -> None:
    certs(spec, None, None, False)
    folder = tls_dir(spec)
    key = (folder / "db-server.key").read_bytes()
    spec.write_text(spec.read_text() + '\n[kubernetes]\nnamespace = "store"\n')
    wrong = certs(spec, None, None, True)
    assert not wrong.ok and "db.store.svc" in wrong.report
    fixed = certs(spec, None, None, False)
    assert "db-server.crt: issued" in fixed.report
    assert (folder / "db-server.key").read_bytes() == key  # same key, new certificate
    san = load(folder / "db-server.crt").extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "db.store.svc.cluster.local" in san
    assert certs(spec, None, None, True).ok


def test_check_without_keys_checks_certificates_only(spec: Path) -> None:
    """CI has the .crt files (committed) but not the keys (.gitignore)."""
    certs(spec, None, None, False)
    for key in tls_dir(spec).glob("*.key"):
        key.unlink()
    result = certs(spec, None, None, True)
    assert result.ok and "not checked" in result.report


def test_check_catches_a_swapped_key_and_a_foreign_leaf(spec: Path) -> None:
    certs(spec, None, None, False)
    folder = tls_dir(spec)
    (folder / "db-server.key").unlink()
    shutil.copy(folder / "app-client.key", folder / "db-server.key")
    result = certs(spec, None, None, True)
    assert not result.ok and "does not match db-server.key" in result.report
    _, cert, _ = foreign_leaf("app", ExtendedKeyUsageOID.CLIENT_AUTH)
    (folder / "app-client.crt").write_bytes(cert)
    result = certs(spec, None, None, True)
    assert "app-client.crt: not signed by castle's CA" in result.report


def test_cli_exit_codes(spec: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["certs", str(spec), "--check"]).exit_code == 1
    first = runner.invoke(app, ["certs", str(spec)])
    assert first.exit_code == 0, first.output
    assert runner.invoke(app, ["certs", str(spec), "--check"]).exit_code == 0
    assert runner.invoke(app, ["certs", str(spec), "--check", "--days", "400"]).exit_code == 1


def test_renewal_near_expiry_keeps_keys(spec: Path) -> None:
    certs(spec, None, 10, False)  # short-lived leaves
    folder = tls_dir(spec)
    keys = {p.name: p.read_bytes() for p in folder.glob("*.key")}
    assert not certs(spec, None, 30, True).ok
    assert "0 files written" in certs(spec, None, 10, False).report  # 10 days left is fine
    renewed = certs(spec, None, None, False)  # default 365: 10 days left is within 30
    assert "expires on" in renewed.report
    assert {p.name: p.read_bytes() for p in folder.glob("*.key")} == keys
    assert certs(spec, None, 30, True).ok


# -- never overwrite what castle did not make ------------------------------------------------


def test_missing_leaf_key_gets_a_new_key_and_certificate(spec: Path) -> None:
    certs(spec, None, None, False)
    folder = tls_dir(spec)
    old_cert = (folder / "app-client.crt").read_bytes()
    (folder / "app-client.key").unlink()
    result = certs(spec, None, None, False)
    assert "its key was missing" in result.report
    assert (folder / "app-client.crt").read_bytes() != old_cert
    assert certs(spec, None, None, True).ok


def test_foreign_ca_certificate_is_refused(spec: Path) -> None:
    certs(spec, None, None, False)
    folder = tls_dir(spec)
    _, other = foreign_ca()
    (folder / "ca.crt").write_bytes(other.public_bytes(serialization.Encoding.PEM))
    before = snapshot(folder)
    with pytest.raises(WriteRefused, match="does not belong to ca.key"):
        certs(spec, None, None, False)
    assert snapshot(folder) == before


def test_lost_ca_key_with_leaves_says_what_to_do(spec: Path) -> None:
    certs(spec, None, None, False)
    folder = tls_dir(spec)
    (folder / "ca.key").unlink()
    before = snapshot(folder)
    with pytest.raises(WriteRefused, match="Restore ca.key from your backup"):
        certs(spec, None, None, False)
    (folder / "ca.crt").unlink()
    with pytest.raises(WriteRefused, match="move ca.crt and every"):
        certs(spec, None, None, False)
    del before["ca.crt"]
    assert snapshot(folder) == before
    # Following the advice: move the certificates away; the keys are reused.
    keys = {p.name: p.read_bytes() for p in folder.glob("*.key")}
    for crt in folder.glob("*.crt"):
        crt.unlink()
    assert certs(spec, None, None, False).ok
    assert {p.name: p.read_bytes() for p in folder.glob("*-*.key")} == keys
    assert certs(spec, None, None, True).ok


def test_ca_certificate_recreated_from_its_key_keeps_leaves_valid(spec: Path) -> None:
    certs(spec, None, None, False)
    folder = tls_dir(spec)
    leaf = (folder / "db-server.crt").read_bytes()
    (folder / "ca.crt").unlink()
    result = certs(spec, None, None, False)
    assert "re-created from the existing ca.key" in result.report
    assert (folder / "db-server.crt").read_bytes() == leaf
    assert openssl_verify(folder / "ca.crt", folder / "db-server.crt")


def test_leaf_from_another_ca_and_garbage_key_are_never_replaced(spec: Path) -> None:
    certs(spec, None, None, False)
    folder = tls_dir(spec)
    _, cert, _ = foreign_leaf("db", ExtendedKeyUsageOID.SERVER_AUTH)
    (folder / "db-server.crt").write_bytes(cert)
    with pytest.raises(WriteRefused, match="db-server.crt: not issued by castle's CA"):
        certs(spec, None, None, False)
    assert (folder / "db-server.crt").read_bytes() == cert
    (folder / "db-server.crt").unlink()
    (folder / "app-client.key").write_bytes(b"not a key\n")
    with pytest.raises(WriteRefused, match="app-client.key: not an unencrypted PEM"):
        certs(spec, None, None, False)
    assert (folder / "app-client.key").read_bytes() == b"not a key\n"
    assert not (folder / "db-server.crt").exists()  # all or nothing: nothing was issued


def test_foreign_gitignore_is_left_alone_with_a_warning(spec: Path) -> None:
    certs(spec, None, None, False)
    folder = tls_dir(spec)
    (folder / ".gitignore").write_text("*.log\n")
    result = certs(spec, None, None, False)
    assert "warning: .gitignore is not castle's" in result.report
    assert (folder / ".gitignore").read_text() == "*.log\n"


def test_generate_check_never_reads_the_keys(spec: Path) -> None:
    runner = CliRunner()
    out = spec.parent
    res = runner.invoke(app, ["generate", str(spec), "-o", str(out), "-t", "compose"])
    assert res.exit_code == 0, res.output
    certs(spec, None, None, False)
    for key in tls_dir(spec).glob("*.key"):
        key.write_bytes(b"garbage")
        key.chmod(0)
    res = runner.invoke(app, ["generate", str(spec), "-o", str(out), "-t", "compose", "--check"])
    assert res.exit_code == 0, res.output


def test_check_fails_on_a_key_others_can_read(spec: Path) -> None:
    certs(spec, None, None, False)
    key = tls_dir(spec) / "db-server.key"
    key.chmod(0o644)  # the test loosens it; castle itself never chmods a key
    result = certs(spec, None, None, True)
    assert not result.ok and "db-server.key is readable by others" in result.report
    assert "warning: db-server.key" in certs(spec, None, None, False).report
    assert key.stat().st_mode & 0o777 == 0o644  # reported, not changed
