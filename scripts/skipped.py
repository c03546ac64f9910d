"""List the tests a pytest JUnit XML report skipped; exit 1 when there is any (xfail aside)."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET


def skipped(report: str) -> list[str]:
    """`file::test: reason` for every skipped test case of a JUnit XML report."""
    out = []
    for case in ET.parse(report).getroot().iter("testcase"):
        for skip in case.findall("skipped"):
            if skip.get("type") == "pytest.xfail":
                continue  # an expected failure is a verdict, not a test that did not run
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            out.append(f"{name}: {skip.get('message', '')}")
    return out


def main(argv: list[str]) -> int:
    """Print each skipped test of the report named in argv[1]; 1 when any, else 0."""
    found = skipped(argv[1])
    for line in found:
        print(f"  skipped: {line}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
