"""CI's skip gate: scripts/skipped.py fails on a skipped test in a real pytest JUnit report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GATE = ROOT / "scripts" / "skipped.py"


def report_of(tmp_path: Path, body: str) -> Path:
    """Run pytest on a one-file suite and return its JUnit XML report."""
    (tmp_path / "test_it.py").write_text("import pytest\n\n" + body)
    junit = tmp_path / "junit.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    f"--junitxml={junit}", "-o", "junit_family=xunit2", str(tmp_path)],
                   cwd=tmp_path, capture_output=True, text=True, check=False)
    return junit


def gate(junit: Path) -> subprocess.CompletedProcess[str]:
    """scripts/skipped.py on a report."""
    return subprocess.run([sys.executable, str(GATE), str(junit)], capture_output=True,
                          text=True, check=False)


def test_a_skipped_test_fails_the_gate_and_is_named(tmp_path: Path) -> None:
    """One skip among passing tests: exit 1, the test and its reason printed."""
    junit = report_of(tmp_path, "def test_ok():\n    pass\n\n"
                      "def test_gone():\n    pytest.skip('tool missing')\n")
    result = gate(junit)
    assert result.returncode == 1, result.stdout
    assert "test_it::test_gone" in result.stdout and "tool missing" in result.stdout
    assert "test_ok" not in result.stdout


def test_no_skip_passes_the_gate(tmp_path: Path) -> None:
    """Negative control: passing tests and an expected failure (a verdict) pass the gate."""
    junit = report_of(tmp_path, "def test_ok():\n    pass\n\n"
                      "@pytest.mark.xfail(strict=True)\ndef test_known():\n    assert False\n")
    result = gate(junit)
    assert result.returncode == 0, result.stdout
    assert result.stdout == ""


def test_test_script_runs_the_gate_in_ci_as_root() -> None:
    """scripts/test.sh hands its JUnit report to the gate when CI=true and root."""
    script = (ROOT / "scripts" / "test.sh").read_text()
    assert '--junitxml="$junit"' in script
    assert 'if [ "${CI:-}" = "true" ] && [ "$(id -u)" -eq 0 ]' in script
    assert 'scripts/skipped.py "$junit"' in script
