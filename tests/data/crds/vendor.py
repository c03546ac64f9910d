"""Rebuild the vendored CRD schemas from upstream CustomResourceDefinition files.

    python tests/data/crds/vendor.py RELEASE CRD_FILE...

keeps, for each CRD of a kind castle emits, every version's `openAPIV3Schema` as
`RELEASE/<group>/<kind>_<version>.json`. Helm template lines (`{{ ... }}`, only in the
metadata of Linkerd's chart files) are dropped before parsing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

KINDS = {
    "security.istio.io": {"PeerAuthentication", "AuthorizationPolicy"},
    "policy.linkerd.io": {"Server", "AuthorizationPolicy", "MeshTLSAuthentication",
                          "NetworkAuthentication"},
}


def main(release: str, files: list[str]) -> None:
    """Write the schemas of `files` under this folder's `release/`."""
    root = Path(__file__).resolve().parent / release
    for name in files:
        text = "\n".join(line for line in Path(name).read_text().splitlines()
                         if "{{" not in line)
        for doc in yaml.safe_load_all(text):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            if spec["names"]["kind"] not in KINDS.get(spec["group"], set()):
                continue
            for version in spec["versions"]:
                kind = spec["names"]["kind"].lower()
                out = root / spec["group"] / f"{kind}_{version['name']}.json"
                out.parent.mkdir(parents=True, exist_ok=True)
                schema = version["schema"]["openAPIV3Schema"]
                out.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
