"""castle certs: a private CA and the certificates tls flows need; never overwrites a key."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path
from secrets import token_urlsafe as secrets_token

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from castle.errors import UsageError, WriteRefused
from castle.io.write import TMP_TAG, fsync_dir, locked, write_tmp
from castle.plan import Plan, compile_plan
from castle.spec.load import load
from castle.tls import known
from castle.tls import plan as tlsplan
from castle.tls import recipes as tls_recipes
from castle.tls.check import (
    USAGE,
    CertsResult,
    Key,
    PublicKey,
    _ca_problems,
    _check,
    _day,
    _expiry,
    _inventory,
    _issued_leaves,
    _leaf_problems,
    _loose_keys,
    _public,
    _read,
    _same_key,
    _signed_by,
    _Unreadable,
    _Unusable,
)
from castle.tls.files import GITIGNORE, _gitignore
from castle.tls.known import RENEW_DAYS
from castle.tls.plan import CA_CERT_FILE, CA_KEY_FILE, Leaf
from castle.words import count

CHECK_DAYS = 30  # --check fails when a certificate expires within this many days
SKEW = dt.timedelta(minutes=5)  # not_before slightly in the past: clocks of hosts differ


def certs(spec: Path, out: Path | None = None, days: int | None = None,
          check: bool = False) -> CertsResult:
    """Issue (or with check, verify) the CA and leaf certificates of a spec's tls flows."""
    loaded = load(spec)
    plan = compile_plan(loaded)
    root = Path(out) if out is not None else Path(spec).parent
    folder = root / plan.spec.tls.dir
    wanted = tlsplan.leaves(plan)
    if check:
        limit = CHECK_DAYS if days is None else days
        if not 0 <= limit <= 36500:
            raise UsageError(f"--days {limit}: with --check, a number of days from 0 to 36500")
        return _check(folder, wanted, limit)
    validity = plan.spec.tls.days if days is None else days
    if not 1 <= validity <= 36500:
        raise UsageError(f"--days {validity}: certificate validity from 1 to 36500 days")
    if not wanted:
        return CertsResult("no flow has tls = true: no certificates needed, nothing written\n",
                           True)
    return _issue(plan.stack, plan.spec.tls.ca_days, root, plan.spec.tls.dir, wanted,
                  validity, tls_recipes.generated_secrets(plan))


def ensure(plan: Plan, root: Path) -> CertsResult | None:
    """What `castle generate` runs first: issue what the spec's tls flows still lack.

    None when no tls flow needs anything. Never overwrites a key; refuses (WriteRefused)
    before generate writes a compose file that could not start.
    """
    wanted = tlsplan.leaves(plan)
    if not wanted:
        return None
    return _issue(plan.stack, plan.spec.tls.ca_days, root, plan.spec.tls.dir, wanted,
                  plan.spec.tls.days, tls_recipes.generated_secrets(plan))


# --- reading -------------------------------------------------------------------------------


# --- judging -------------------------------------------------------------------------------


# --- issuing -------------------------------------------------------------------------------


def _serial() -> int:
    """A random positive 127-bit serial: two certificates never share one (RFC 5280 4.1.2.2)."""
    return int.from_bytes(os.urandom(16), "big") >> 1 or 1


def _sign(builder: x509.CertificateBuilder, key: Key) -> x509.Certificate:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        try:  # RFC 6979: the same input signs to the same bytes (cryptography >= 44)
            return builder.sign(key, hashes.SHA256(), ecdsa_deterministic=True)
        except TypeError:
            pass
    return builder.sign(key, hashes.SHA256())


def _ca_cert(key: Key, stack: str, now: dt.datetime, days: int) -> x509.Certificate:
    pub = key.public_key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "castle"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"castle CA {stack}")])
    start = now - SKEW
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(pub)
        .serial_number(_serial())
        .not_valid_before(start).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
    )
    return _sign(builder, key)


def _leaf_cert(leaf: Leaf, pub: PublicKey, stack: str, ca_key: Key, ca: x509.Certificate,
               start: dt.datetime, end: dt.datetime) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "castle"),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, stack),
                         x509.NameAttribute(NameOID.COMMON_NAME, leaf.service)])
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(ca.subject).public_key(pub)
        .serial_number(_serial())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False,
            key_encipherment=isinstance(pub, rsa.RSAPublicKey), data_encipherment=False,
            key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False,
            decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([USAGE[leaf.role]]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in leaf.names]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
    )
    return _sign(builder, ca_key)


def _key_pem(key: Key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, *, key: bool) -> None:
    """Write beside, fsync, then move into place; a key is linked so it can never replace one."""
    try:
        if key:
            _write_key(path, data)
            return
        tmp = write_tmp(path, data, 0o644)  # certificates are public: 0644
        try:
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except FileExistsError:
        raise WriteRefused(f"{path}: appeared while castle was working; not overwritten") from None


def _write_key(path: Path, data: bytes) -> None:
    """A new key file, mode 0600 from its first byte; FileExistsError if the name is taken."""
    tmp = write_tmp(path, data, 0o600)  # mkstemp: 0600 from creation, castle never chmods a key
    try:
        try:
            os.link(tmp, path)  # fails if a key appeared meanwhile: never overwritten
        except FileExistsError:
            raise
        except OSError:  # no hard links on this file system: exclusive create, then write
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                os.fsync(fh.fileno())
    finally:
        tmp.unlink(missing_ok=True)


def _issue(stack: str, ca_days: int, root: Path, tls_dir: str, wanted: list[Leaf],
           days: int, secrets: dict[str, str]) -> CertsResult:
    folder = known.tls_folder(root, tls_dir)
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    renew = min(dt.timedelta(days=RENEW_DAYS), dt.timedelta(days=days) / 3)
    with locked(folder):
        for stray in folder.glob(f".*{TMP_TAG}*"):  # a crashed run's leftovers (we hold the lock)
            if stray.is_file() and not stray.is_symlink():
                stray.unlink()
        disk = _inventory(folder, wanted)
        if disk.unusable:
            raise WriteRefused("\n".join(f"{folder}/{u}; castle leaves it alone: fix or move it "
                                         "away" for u in disk.unusable))
        refused: list[str] = []
        lines: list[str] = []
        writes: list[tuple[str, bytes, bool]] = []
        ca_key, ca = disk.keys[CA_KEY_FILE], disk.certs[CA_CERT_FILE]
        if CA_KEY_FILE in disk.unreadable:
            raise WriteRefused(f"{folder}/{CA_KEY_FILE}: cannot read it; castle needs the CA's "
                               "key to issue: run castle as its owner")
        leftovers = _issued_leaves(folder)
        restart = ("to start a new CA, move ca.crt and every *-server.crt / *-client.crt "
                   "away (keys may stay: castle reuses them)")
        if ca_key is None and ca is not None:
            raise WriteRefused(f"{folder}/{CA_CERT_FILE} exists but {CA_KEY_FILE} does not: castle "
                               f"cannot sign without the CA's key. Restore {CA_KEY_FILE} from "
                               f"your backup, or {restart}")
        if ca_key is None and leftovers:
            raise WriteRefused(f"{folder}: {', '.join(leftovers)} exist but {CA_KEY_FILE} does "
                               "not: they were issued by a CA castle no longer holds. Restore "
                               f"{CA_KEY_FILE} and {CA_CERT_FILE} from your backup, or {restart}")
        if ca_key is None:
            ca_key = ec.generate_private_key(ec.SECP256R1())
            writes.append((CA_KEY_FILE, _key_pem(ca_key), True))
            ca = _ca_cert(ca_key, stack, now, ca_days)
            writes.append((CA_CERT_FILE, _cert_pem(ca), False))
            lines.append(f"{CA_KEY_FILE}: new private CA key (ECDSA P-256, mode 0600)")
            lines.append(f"{CA_CERT_FILE}: new CA {ca.subject.rfc4514_string()}, until "
                         f"{_day(ca.not_valid_after_utc)}")
        elif ca is None:
            ca = _ca_cert(ca_key, stack, now, ca_days)
            writes.append((CA_CERT_FILE, _cert_pem(ca), False))
            lines.append(f"{CA_CERT_FILE}: re-created from the existing {CA_KEY_FILE}, until "
                         f"{_day(ca.not_valid_after_utc)}")
        else:
            problems = _ca_problems(ca, ca_key)
            if problems:
                raise WriteRefused(f"{folder}/{CA_CERT_FILE}: {'; '.join(problems)}. castle does "
                                   "not replace a CA certificate it cannot vouch for: move it "
                                   f"away to have castle re-create it from {CA_KEY_FILE}")
            if ca.not_valid_after_utc <= now + dt.timedelta(days=1):
                when = "expired" if ca.not_valid_after_utc <= now else "expires"
                raise WriteRefused(f"{folder}/{CA_CERT_FILE}: {when} on "
                                   f"{_day(ca.not_valid_after_utc)}; move it away and castle "
                                   f"re-creates it from {CA_KEY_FILE} (certificates stay valid)")
            state = f"kept, until {_day(ca.not_valid_after_utc)}"
            if ca.not_valid_after_utc - now < dt.timedelta(days=RENEW_DAYS):
                state += (f"; warning: renew it soon (move {CA_CERT_FILE} away and run castle "
                          f"certs: it is re-created from {CA_KEY_FILE}, the CA is never "
                          "replaced silently)")
            lines.append(f"{CA_CERT_FILE}: {state}")
        ca_pub = ca.public_key()
        assert isinstance(ca_pub, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)  # checked above
        end_cap = ca.not_valid_after_utc
        issued = 0
        final = {CA_CERT_FILE: ca}  # each certificate as it stands after this run
        for leaf in wanted:
            key, cert = disk.keys[leaf.key_file], disk.certs[leaf.cert_file]
            if cert is not None and not _signed_by(cert, ca_pub):
                refused.append(f"{folder}/{leaf.cert_file}: not issued by castle's CA "
                               f"({CA_CERT_FILE}); castle will not replace it: move it away to "
                               "have castle issue a new one")
                continue
            reasons: list[str] = []
            pub: PublicKey | None = None
            if key is None and leaf.key_file in disk.unreadable:
                pub = _public(cert) if cert is not None else None
                if pub is None:
                    refused.append(f"{folder}/{leaf.key_file}: cannot read it and there is no "
                                   f"{leaf.cert_file} to take its public key from; run castle "
                                   "as a user who may read it")
                    continue
                lines.append(f"{leaf.key_file}: not readable here; its certificate is checked "
                             "alone")
            elif key is None:
                key = ec.generate_private_key(ec.SECP256R1())
                writes.append((leaf.key_file, _key_pem(key), True))
                lines.append(f"{leaf.key_file}: new key (ECDSA P-256, mode 0600)")
                reasons.append("new key" if cert is None else "its key was missing")
            elif cert is not None and not _same_key(cert, key):
                reasons.append(f"did not match {leaf.key_file}")
            if cert is None:
                reasons = reasons or ["missing"]
            else:
                reasons += _leaf_problems(leaf, cert, ca)
            end = min(now + dt.timedelta(days=days), end_cap)
            if not reasons and cert is not None:
                late = _expiry(cert, now, renew)
                # Renewing only helps when the new certificate would outlive the old one.
                if late and end > cert.not_valid_after_utc + dt.timedelta(minutes=1):
                    reasons.append(late)
            if not reasons:
                assert cert is not None
                lines.append(f"{leaf.cert_file}: unchanged ({leaf.role}, until "
                             f"{_day(cert.not_valid_after_utc)})")
                final[leaf.cert_file] = cert
                continue
            if pub is None:
                assert key is not None
                pub = key.public_key()
            new = _leaf_cert(leaf, pub, stack, ca_key, ca, now - SKEW, end)
            final[leaf.cert_file] = new
            writes.append((leaf.cert_file, _cert_pem(new), False))
            issued += 1
            lines.append(f"{leaf.cert_file}: issued ({'; '.join(reasons)}): {leaf.role} "
                         f"{', '.join(leaf.names)}, until {_day(end)}")
        for name in sorted(secrets.values()):
            try:
                present = _read(folder / name) is not None
            except _Unreadable:
                present = True
            except _Unusable as exc:
                refused.append(f"{folder}/{exc}; castle leaves it alone: fix or move it away")
                continue
            if present:
                lines.append(f"{name}: kept")
            else:
                # printable, so the image's entrypoint may read it as it reads any password
                writes.append((name, secrets_token(32).encode(), True))
                lines.append(f"{name}: new random password (mode 0600)")
        if refused:
            raise WriteRefused("\n".join(refused))
        ignore, ignore_line = _gitignore(folder)
        if ignore is not None:
            writes.append((GITIGNORE, ignore, False))
        lines.append(ignore_line)
        for name, data, is_key in writes:
            _write(folder / name, data, key=is_key)
            disk.digests[name] = hashlib.sha256(data).hexdigest()
        if writes:
            fsync_dir(folder)
    needed = {leaf.cert_file for leaf in wanted}
    for name in leftovers:
        if name not in needed:
            lines.append(f"{name}: no tls flow needs it any more; left in place")
    lines.extend(_loose_keys(folder, wanted))
    summary = (f"{folder}: {count(len(writes), 'file')} written, "
               f"{issued} certificate{'s' if issued != 1 else ''} issued")
    report = "\n".join([summary, *("  " + line for line in lines)]) + "\n"
    seen = None
    if not disk.unreadable:  # every key read: the record may vouch for the whole folder
        valid = {name: (int(cert.not_valid_before_utc.timestamp()),
                        int(cert.not_valid_after_utc.timestamp())) for name, cert in final.items()}
        seen = known.facts(known.Inputs(str(folder), stack, ca_days, days, wanted,
                                        sorted(secrets.values())), disk.digests, valid)
    return CertsResult(report, True, seen)


# --- checking ------------------------------------------------------------------------------


