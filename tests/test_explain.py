"""`castle explain`: each claim is checked against the spec text and the generated files
themselves (written by `castle generate`), not against explain's own lookups."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from castle.cli import app

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "zones.example.toml"


def explain(spec: Path, src: str, dst: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["explain", str(spec), src, dst])
    return result.exit_code, result.output


def flow_line(text: str, index: int) -> int:
    """The line of the index-th [[flows]] header, read from the spec text."""
    return [n for n, line in enumerate(text.splitlines(), start=1)
            if line.strip().startswith("[[flows]]")][index]


def has_target(name: str) -> bool:
    return importlib.util.find_spec(f"castle.targets.{name}") is not None


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's artifacts on disk, as a user would have them."""
    out = tmp_path_factory.mktemp("out")
    targets = [t for t in ("compose", "iptables", "nftables", "k8s") if has_target(t)]
    args = ["generate", str(EXAMPLE), "-o", str(out)]
    for t in targets:
        args += ["-t", t]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def test_web_to_app_names_flow_network_rule_and_policy(generated: Path) -> None:
    code, out = explain(EXAMPLE, "web", "app")
    assert code == 0
    assert "ALLOWED   8000/tcp" in out
    assert f"flows[1] at {EXAMPLE}:{flow_line(EXAMPLE.read_text(), 1)}" in out
    # the network: one that compose.yaml really gives both web and app, with their addresses
    compose = yaml.safe_load((generated / "compose.yaml").read_text())
    nets = set(compose["services"]["web"]["networks"]) & set(compose["services"]["app"]["networks"])
    assert nets == {"web-app"}
    web_ip = compose["services"]["web"]["networks"]["web-app"]["ipv4_address"]
    app_ip = compose["services"]["app"]["networks"]["web-app"]["ipv4_address"]
    assert "network web-app" in out and f"web {web_ip} -> app {app_ip}" in out


def test_web_to_app_points_at_the_real_iptables_line(generated: Path) -> None:
    if not has_target("iptables"):
        pytest.skip("the iptables target is not built yet")
    _, out = explain(EXAMPLE, "web", "app")
    m = re.search(r"iptables  firewall/iptables\.sh:(\d+): ", out)
    assert m, out
    line = (generated / "firewall/iptables.sh").read_text().splitlines()[int(m.group(1)) - 1]
    assert "--dport 8000" in line and ("ACCEPT" in line or "RETURN" in line)
    compose = yaml.safe_load((generated / "compose.yaml").read_text())
    web_ip = compose["services"]["web"]["networks"]["web-app"]["ipv4_address"]
    assert re.search(rf"-s {re.escape(web_ip)}(/32)? ", line)  # web's address as compose sets it
    assert not line.lstrip().startswith("#")


def test_web_to_app_names_the_networkpolicies(generated: Path) -> None:
    if not has_target("k8s"):
        pytest.skip("the k8s target is not built yet")
    _, out = explain(EXAMPLE, "web", "app")
    text = (generated / "k8s/networkpolicies.yaml").read_text()
    lines = text.splitlines()
    found = re.findall(r"k8s/networkpolicies\.yaml:(\d+): NetworkPolicy (\S+)/(\S+) "
                       r"\((ingress|egress) of (\w+)\)", out)
    assert {(side, who) for _, _, _, side, who in found} == {("egress", "web"), ("ingress", "app")}
    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all(text)
            if d and d.get("kind") == "NetworkPolicy"}
    for n, _ns, name, side, who in found:
        assert name in lines[int(n) - 1]  # the line really is the policy's name
        policy = docs[name]["spec"]
        # independent reading: the policy selects `who` and has a rule of that side on 8000
        assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": who}
        rules = policy["ingress" if side == "ingress" else "egress"]
        assert any(p.get("port") == 8000 for r in rules for p in r.get("ports", []))


def test_missing_target_says_not_generated(monkeypatch: pytest.MonkeyPatch) -> None:
    import castle.targets as registry

    monkeypatch.setitem(registry.MODULES, "iptables", "castle.targets.no_such_target")
    code, out = explain(EXAMPLE, "web", "app")
    assert code == 0
    assert "iptables  not generated" in out
    assert "flows[1]" in out  # the rest of the explanation is still there


def test_web_to_db_explains_the_skipped_wall() -> None:
    code, out = explain(EXAMPLE, "web", "db")
    assert code == 0
    assert "DENIED    5432/tcp" in out
    assert "skips the wall 'backend'" in out
    assert 'waiver = "why"' in out
    assert "ALLOWED" not in out


def test_waived_flow_is_allowed_and_shows_its_waiver(tmp_path: Path) -> None:
    """Negative control for the test above: with a waiver web -> db is explained as allowed."""
    spec = tmp_path / "zones.toml"
    text = EXAMPLE.read_text() + ('\n[[flows]]\nfrom = "web"\nto = "db"\nports = [5432]\n'
                                  'waiver = "legacy <report> & \\"export\\""\n')
    spec.write_text(text)
    code, out = explain(spec, "web", "db")
    assert code == 0, out
    assert "ALLOWED   5432/tcp" in out
    assert f"flows[4] at {spec}:{flow_line(text, 4)}" in out
    assert 'waiver: legacy <report> & "export"' in out


def test_db_to_app_is_outward_and_replies_only() -> None:
    code, out = explain(EXAMPLE, "db", "app")
    assert code == 0
    assert "goes outward" in out
    assert "replies only" in out
    assert "REVERSE   app opens connections to db on 5432/tcp (flows[3])" in out


def test_internet_and_cidr() -> None:
    _, out = explain(EXAMPLE, "internet", "app")
    assert "enters at tier 'backend'" in out
    _, out = explain(EXAMPLE, "internet", "web")
    assert "ALLOWED   80/tcp" in out and "ALLOWED   443/tcp" in out
    assert "published: host 80/tcp -> web:80/tcp" in out
    _, out = explain(EXAMPLE, "cidr:192.0.2.0/28", "web")
    assert "ALLOWED   443/tcp (through internet -> web)" in out
    _, out = explain(EXAMPLE, "app", "internet")
    assert "DENIED" in out and "that flow passes the wall rules" in out


@pytest.mark.parametrize(("src", "dst", "hint"), [
    ("wbe", "app", "did you mean 'web'?"),
    ("web", "adminn", "did you mean 'admin'?"),
    ("cidr:10.0.0.300/8", "web", "malformed CIDR"),
    ("tier:backend", "db", "not a tier"),
])
def test_unknown_names_exit_2(src: str, dst: str, hint: str) -> None:
    code, out = explain(EXAMPLE, src, dst)
    assert code == 2
    assert hint in out
    assert "Traceback" not in out
