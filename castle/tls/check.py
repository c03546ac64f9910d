"""Reading and judging the certificates on disk: the inventory, every problem, `--check`."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.extensions import ExtensionTypeVar
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from castle.tls.files import (
    CertsResult,
    _issued_leaves,
    _loose_keys,
    _read,
    _Unreadable,
    _Unusable,
)
from castle.tls.plan import CA_CERT_FILE, CA_KEY_FILE, Leaf
from castle.words import count

__all__ = ["CertsResult", "_issued_leaves", "_loose_keys", "_read", "_Unreadable", "_Unusable"]

USAGE = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}

Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


@dataclass
class _Disk:
    """The TLS folder as found: parsed certificates and keys (None = absent), unusable files."""

    certs: dict[str, x509.Certificate | None] = field(default_factory=dict)
    keys: dict[str, Key | None] = field(default_factory=dict)
    unusable: list[str] = field(default_factory=list)
    unreadable: set[str] = field(default_factory=set)  # keys this user may not read
    digests: dict[str, str] = field(default_factory=dict)  # SHA-256 of each file read


def _load_cert(name: str, data: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise _Unusable(f"{name}: not a PEM certificate") from None


def _load_key(name: str, data: bytes) -> Key:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise _Unusable(f"{name}: not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise _Unusable(f"{name}: castle uses ECDSA or RSA keys only")
    return key


def _bytes(disk: _Disk, folder: Path, name: str) -> bytes | None:
    """A file's bytes (None: absent), its SHA-256 noted in disk.digests."""
    data = _read(folder / name)
    if data is not None:
        disk.digests[name] = hashlib.sha256(data).hexdigest()
    return data


def _inventory(folder: Path, wanted: list[Leaf]) -> _Disk:
    disk = _Disk()
    names = [(CA_CERT_FILE, CA_KEY_FILE)] + [(leaf.cert_file, leaf.key_file) for leaf in wanted]
    for cert_name, key_name in names:
        try:
            data = _bytes(disk, folder, cert_name)
            disk.certs[cert_name] = None if data is None else _load_cert(cert_name, data)
        except _Unusable as exc:
            disk.certs[cert_name] = None
            disk.unusable.append(str(exc))
        try:
            data = _bytes(disk, folder, key_name)
            disk.keys[key_name] = None if data is None else _load_key(key_name, data)
        except _Unreadable:
            # a server's key handed to its group (root:GID 0640): the certificate is checked
            # alone and re-issued, when needed, for the public key it already carries
            disk.keys[key_name] = None
            disk.unreadable.add(key_name)
        except _Unusable as exc:
            disk.keys[key_name] = None
            disk.unusable.append(str(exc))
    return disk


def _der(pub: PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _signed_by(cert: x509.Certificate, issuer: PublicKey) -> bool:
    """True when issuer's key made cert's signature (names aside: that is what 'ours' means)."""
    algo = cert.signature_hash_algorithm
    if algo is None:
        return False
    try:
        if isinstance(issuer, ec.EllipticCurvePublicKey):
            issuer.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algo))
        else:
            issuer.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algo)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _public(cert: x509.Certificate) -> PublicKey | None:
    pub = cert.public_key()
    return pub if isinstance(pub, ec.EllipticCurvePublicKey | rsa.RSAPublicKey) else None


def _same_key(cert: x509.Certificate, key: Key) -> bool:
    pub = _public(cert)
    return pub is not None and _der(pub) == _der(key.public_key())


def _ext(cert: x509.Certificate, cls: type[ExtensionTypeVar]) -> ExtensionTypeVar | None:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except (x509.ExtensionNotFound, ValueError):
        return None


def _day(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%d")


def _expiry(cert: x509.Certificate, now: dt.datetime, within: dt.timedelta) -> str | None:
    if cert.not_valid_before_utc > now:
        return f"not valid before {_day(cert.not_valid_before_utc)}"
    left = cert.not_valid_after_utc - now
    if left <= dt.timedelta(0):
        return f"expired on {_day(cert.not_valid_after_utc)}"
    if left < within:
        return f"expires on {_day(cert.not_valid_after_utc)}, within {count(within.days, 'day')}"
    return None


def _ca_problems(cert: x509.Certificate, key: Key | None) -> list[str]:
    why: list[str] = []
    bc = _ext(cert, x509.BasicConstraints)
    if bc is None or not bc.ca:
        why.append("not a CA certificate")
    pub = _public(cert)
    if pub is None or cert.issuer != cert.subject or not _signed_by(cert, pub):
        why.append("not self-signed")
    if key is not None and not _same_key(cert, key):
        why.append(f"does not belong to {CA_KEY_FILE}")
    return why


def _leaf_problems(leaf: Leaf, cert: x509.Certificate, ca: x509.Certificate | None) -> list[str]:
    """How a leaf certificate differs from what the spec asks for (empty: it matches)."""
    why: list[str] = []
    ca_pub = _public(ca) if ca is not None else None
    if ca is None or ca_pub is None:
        why.append(f"cannot be verified: no usable {CA_CERT_FILE}")
    elif cert.issuer != ca.subject or not _signed_by(cert, ca_pub):
        why.append(f"not signed by castle's CA ({CA_CERT_FILE})")
    cn = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cn != [leaf.service]:
        why.append(f"subject CN {', '.join(map(str, cn)) or 'missing'}; the spec needs "
                   f"{leaf.service}")
    san = _ext(cert, x509.SubjectAlternativeName)
    names = sorted(san.get_values_for_type(x509.DNSName)) if san is not None else []
    if names != sorted(leaf.names):
        why.append(f"names {', '.join(names) or 'none'}; the spec needs {', '.join(leaf.names)}")
    eku = _ext(cert, x509.ExtendedKeyUsage)
    if eku is None or list(eku) != [USAGE[leaf.role]]:
        have = ", ".join(u._name for u in eku) if eku is not None else "any"
        want = USAGE[leaf.role]._name
        why.append(f"usage {have}; a {leaf.role} certificate needs {want} only")
    bc = _ext(cert, x509.BasicConstraints)
    if bc is None or bc.ca:
        why.append("may act as a CA" if bc is not None else "lacks basicConstraints")
    ku = _ext(cert, x509.KeyUsage)
    if ku is None or not ku.digital_signature:
        why.append("key usage lacks digitalSignature")
    return why


def _check(folder: Path, wanted: list[Leaf], days: int) -> CertsResult:
    """Verify without writing: every needed certificate present, matching and not expiring."""
    if not wanted:
        return CertsResult("no flow has tls = true: no certificates needed\n", True)
    now = dt.datetime.now(dt.UTC)
    within = dt.timedelta(days=days)
    disk = _inventory(folder, wanted)
    bad: list[str] = [f"{u}" for u in disk.unusable]
    good: list[str] = []
    notes: list[str] = []
    ca_key, ca = disk.keys[CA_KEY_FILE], disk.certs[CA_CERT_FILE]
    if ca is None:
        if not any(CA_CERT_FILE in u for u in disk.unusable):
            bad.append(f"{CA_CERT_FILE}: missing (run castle certs)")
    else:
        problems = _ca_problems(ca, ca_key)
        late = _expiry(ca, now, within)
        problems += [late] if late else []
        if problems:
            bad.append(f"{CA_CERT_FILE}: {'; '.join(problems)}")
        else:
            good.append(f"{CA_CERT_FILE}: ok, until {_day(ca.not_valid_after_utc)}")
    if ca_key is None:
        where = "not readable by this user" if CA_KEY_FILE in disk.unreadable else "not here"
        notes.append(f"{CA_KEY_FILE}: {where}, not checked (castle certs needs it to issue)")
    for leaf in wanted:
        cert, key = disk.certs[leaf.cert_file], disk.keys[leaf.key_file]
        if cert is None:
            if not any(leaf.cert_file in u for u in disk.unusable):
                bad.append(f"{leaf.cert_file}: missing (run castle certs)")
            continue
        problems = _leaf_problems(leaf, cert, ca)
        if key is None and leaf.key_file in disk.unreadable:
            notes.append(f"{leaf.key_file}: not readable by this user, key match not checked")
        elif key is None:
            notes.append(f"{leaf.key_file}: not here, key match not checked")
        elif not _same_key(cert, key):
            problems.append(f"does not match {leaf.key_file}")
        late = _expiry(cert, now, within)
        problems += [late] if late else []
        if problems:
            bad.append(f"{leaf.cert_file}: {'; '.join(problems)}")
        else:
            good.append(f"{leaf.cert_file}: ok ({leaf.role}, until "
                        f"{_day(cert.not_valid_after_utc)})")
    bad += [w.removeprefix("warning: ") for w in _loose_keys(folder, wanted)]
    verdict = (f"{folder}: {len(bad)} problem{'s' if len(bad) != 1 else ''}" if bad
               else f"{folder}: all {len(wanted) + 1} certificates ok for the spec and valid "
                    f"for at least {count(days, 'more day')}")
    lines = [verdict, *(f"  FAIL {b}" for b in bad), *(f"  ok   {g}" for g in good),
             *(f"  note {n}" for n in notes)]
    return CertsResult("\n".join(lines) + "\n", not bad)
