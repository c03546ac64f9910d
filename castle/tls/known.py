"""An unchanged TLS folder answered without cryptography: what generate's last check saw.

`castle generate` checks the certificates on disk before writing (castle.tls.certs), and
that check needs cryptography, whose import costs more than the rest of a small run. After
a full check the run records what it saw in OUT/.castle-manifest.json (key "tls"): the
inputs that decide the certificates (TLS folder, stack, validity days, every leaf's
service, role and names, the generated secrets), the SHA-256 of each certificate and key,
and each certificate's validity. The next run gives the same answer from that record,
standard library only, when every fact still holds: the same inputs, the same castle (the
manifest's fingerprint), byte-identical files, no leftover temporary file, and every
certificate valid now and further from expiry than the renewal margin. Anything else
(no record, a changed or missing file, other inputs, expiry near, a record of the wrong
shape) returns None and the full check runs. The record is read as hostile input: it
never names a file to read, write or delete; it only supplies hashes and dates to compare.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from castle.errors import WriteRefused
from castle.io.write import TMP_TAG, inside, locked
from castle.plan import Plan
from castle.tls import plan as tlsplan
from castle.tls import recipes as tls_recipes
from castle.tls.files import CertsResult, _gitignore, _issued_leaves, _loose_keys, _read, _Unusable
from castle.tls.plan import CA_CERT_FILE, CA_KEY_FILE, Leaf
from castle.words import count

FORMAT = 1
RENEW_DAYS = 30  # castle certs re-issues a leaf this close to expiry (or at 1/3 of its life)
DAY = 86400
_SHA = re.compile(r"[0-9a-f]{64}")


class Inputs(NamedTuple):
    """What decides the certificates castle keeps or issues in one TLS folder."""

    folder: str
    stack: str
    ca_days: int
    days: int
    wanted: list[Leaf]
    secrets: list[str]  # file names of the generated secrets

    def as_json(self) -> dict[str, Any]:
        """The inputs as the record stores them."""
        return {"format": FORMAT, "folder": self.folder, "stack": self.stack,
                "ca_days": self.ca_days, "days": self.days,
                "leaves": [[leaf.service, leaf.role, list(leaf.names)] for leaf in self.wanted],
                "secrets": list(self.secrets)}

    def files(self) -> list[str]:
        """The certificate and key files the record vouches for."""
        return [CA_CERT_FILE, CA_KEY_FILE,
                *(n for leaf in self.wanted for n in (leaf.cert_file, leaf.key_file))]

    def certs(self) -> list[str]:
        """The certificate files among them."""
        return [CA_CERT_FILE, *(leaf.cert_file for leaf in self.wanted)]


def tls_folder(root: Path, tls_dir: str) -> Path:
    """The TLS folder below root, as castle certs and generate name it."""
    if root.is_symlink():  # -o may be a link; links below it are refused
        root = root.resolve()
    return inside(root, tls_dir)


def renew_margin(days: int) -> int:
    """Seconds before expiry at which castle re-issues a leaf of `days` validity."""
    return int(min(dt.timedelta(days=RENEW_DAYS), dt.timedelta(days=days) / 3).total_seconds())


def facts(inputs: Inputs, digests: dict[str, str],
          valid: dict[str, tuple[int, int]]) -> dict[str, Any] | None:
    """The record of a checked folder (None when some file is missing from what was seen)."""
    names, certs = inputs.files(), inputs.certs()
    if any(n not in digests for n in names) or any(n not in valid for n in certs):
        return None
    return inputs.as_json() | {"files": {n: digests[n] for n in names},
                               "valid": {n: list(valid[n]) for n in certs}}


def _shape(record: Any, inputs: Inputs) -> tuple[dict[str, str], dict[str, tuple[int, int]]]:
    """The record's hashes and validity when its shape and inputs are exactly as expected."""
    want = inputs.as_json()
    if not isinstance(record, dict) or set(record) != set(want) | {"files", "valid"}:
        raise ValueError("record shape")
    if any(record[k] != v or type(record[k]) is not type(v) for k, v in want.items()):
        raise ValueError("other inputs")
    files, valid = record["files"], record["valid"]
    if not isinstance(files, dict) or sorted(files) != sorted(inputs.files()):
        raise ValueError("other files")
    if not all(isinstance(v, str) and _SHA.fullmatch(v) for v in files.values()):
        raise ValueError("hash shape")
    if not isinstance(valid, dict) or sorted(valid) != sorted(inputs.certs()):
        raise ValueError("other certificates")
    dates: dict[str, tuple[int, int]] = {}
    for name, span in valid.items():
        if (not isinstance(span, list) or len(span) != 2
                or not all(type(t) is int and 0 <= t < 2**36 for t in span)):
            raise ValueError("date shape")
        dates[name] = (span[0], span[1])
    return files, dates


def _day(when: int) -> str:
    return dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%d")


def inputs_of(plan: Plan, root: Path, wanted: Sequence[Leaf]) -> Inputs:
    """The inputs of this run (the TLS folder refused like castle certs refuses it)."""
    tls = plan.spec.tls
    return Inputs(str(tls_folder(root, tls.dir)), plan.stack, tls.ca_days, tls.days,
                  list(wanted), sorted(tls_recipes.generated_secrets(plan).values()))


def answer(plan: Plan, root: Path, previous: Any, castle: str | None) -> CertsResult | None:
    """What the full check would report for an unchanged folder; None: run the full check.

    previous is the last manifest (untrusted), castle this castle's fingerprint.
    """
    wanted = tlsplan.leaves(plan)
    try:
        if not wanted or not isinstance(previous, dict) or "tls" not in previous:
            return None
        if castle is None or previous.get("castle") != castle:
            return None
        return _answer(inputs_of(plan, root, wanted), previous["tls"], time.time())
    except (OSError, ValueError, TypeError, KeyError, WriteRefused, _Unusable):
        return None  # any doubt: the full check decides


def _answer(inputs: Inputs, record: Any, now: float) -> CertsResult | None:
    files, valid = _shape(record, inputs)
    folder = Path(inputs.folder)
    lines: list[str] = []
    for name, (start, end) in valid.items():
        margin = max(RENEW_DAYS * DAY, DAY) if name == CA_CERT_FILE else renew_margin(inputs.days)
        if start > now or end - now <= margin:
            return None  # near expiry (or not yet valid): the full check says what to do
    with locked(folder):
        if any(TMP_TAG in n for n in os.listdir(folder)):
            return None  # a crashed run's leftovers: the full run sweeps them
        for name, sha in files.items():
            data = _read(folder / name)  # a link, a folder, an unreadable key: _Unusable
            if data is None or hashlib.sha256(data).hexdigest() != sha:
                return None
        lines.append(f"{CA_CERT_FILE}: kept, until {_day(valid[CA_CERT_FILE][1])}")
        lines += [f"{leaf.cert_file}: unchanged ({leaf.role}, until "
                  f"{_day(valid[leaf.cert_file][1])})" for leaf in inputs.wanted]
        for name in inputs.secrets:
            if _read(folder / name) is None:  # missing (or, raised, unreadable): full check
                return None
            lines.append(f"{name}: kept")
        ignore, ignore_line = _gitignore(folder)
        if ignore is not None:
            return None
        lines.append(ignore_line)
        leftovers = _issued_leaves(folder)
    needed = {leaf.cert_file for leaf in inputs.wanted}
    lines += [f"{name}: no tls flow needs it any more; left in place"
              for name in leftovers if name not in needed]
    lines.extend(_loose_keys(folder, inputs.wanted))
    summary = f"{folder}: {count(0, 'file')} written, 0 certificates issued"
    report = "\n".join([summary, *("  " + line for line in lines)]) + "\n"
    return CertsResult(report, True, facts(inputs, files, valid))
