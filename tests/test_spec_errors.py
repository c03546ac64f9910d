"""Every wall rule rejects a broken spec: exit 2, file:line, a clear message, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from castle.cli import app

BASE = """\
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
listen = [80, 443]
[services.app]
tier = "backend"
image = "myapp:1.0"
listen = [8000, "9000-9010/udp"]
[services.db]
tier = "data"
image = "postgres:16"
listen = [5432]
[[flows]]
from = "internet"
to = "web"
ports = [80, 443]
[[flows]]
from = "web"
to = "app"
ports = [8000]
[[flows]]
from = "app"
to = "db"
"""
# line numbers in BASE: [services.web] 10, [services.app] 14, [services.db] 18,
# flows[0] 22, flows[1] 26, flows[2] 30; BASE ends on line 32

FLOW = '[[flows]]\nfrom = "{src}"\nto = "{dst}"\n'


def flow(src: str, dst: str, extra: str = "") -> str:
    """One more [[flows]] table at the end of BASE (header line 33, from 34, to 35)."""
    return BASE + FLOW.format(src=src, dst=dst) + extra


CASES: list[tuple[str, str, int, str]] = [
    # (id, spec text, line, expected message fragment)
    ("toml-syntax", BASE.replace('name = "public"', 'name = "public'), 5, "invalid TOML"),
    ("toml-duplicate-key", BASE.replace('image = "nginx:1.27"', 'image = "a"\nimage = "b"'),
     13, "invalid TOML"),
    ("unknown-field", BASE.replace("listen = [80, 443]", "listne = [80, 443]"), 13,
     "unknown field 'listne'; did you mean 'listen'?"),
    ("unknown-top-field", BASE + "[firewal]\nssh_port = 22\n", 33,
     "unknown field 'firewal'; did you mean 'firewall'?"),
    ("unknown-flow-field", flow("web", "app", "tlz = true\n"), 36,
     "unknown field 'tlz'; did you mean 'tls'?"),
    ("missing-image", BASE.replace('image = "myapp:1.0"\n', ""), 14,
     "missing required field 'image'"),
    ("bad-version", BASE.replace("version = 1", "version = 2"), 1,
     "unsupported format version 2"),
    ("unknown-service", flow("web", "apq"), 35, "unknown service 'apq'; did you mean 'app'?"),
    ("unknown-tier-selector", flow("web", "tier:backnd"), 35,
     "unknown tier 'backnd'; did you mean 'tier:backend'?"),
    ("unknown-service-tier", BASE.replace('tier = "data"', 'tier = "dta"'), 19,
     "unknown tier 'dta'; did you mean 'data'?"),
    ("duplicate-tier", BASE.replace('name = "data"', 'name = "backend"'), 9,
     "tier 'backend' is declared twice"),
    ("bad-service-name", BASE.replace("[services.db]", '[services."db$(reboot)"]')
     .replace('to = "db"', 'to = "db$(reboot)"'), 18, "is not a DNS-1123 label"),
    ("uppercase-stack", BASE.replace('name = "shop"', 'name = "Shop"'), 3,
     "is not a DNS-1123 label"),
    ("reserved-name", BASE.replace("[services.db]", "[services.internet]")
     .replace('to = "db"', 'to = "app"\nports = [8000]'), 18, "reserved"),
    ("skips-wall", flow("web", "db"), 33, "'web' -> 'db' skips the wall 'backend'"),
    ("outward", flow("db", "app", "ports = [8000]\n"), 33,
     "'db' -> 'app' goes outward (from tier 'data' to 'backend')"),
    ("internet-inner", flow("internet", "app", "ports = [8000]\n"), 33,
     "'internet' -> 'app' enters at tier 'backend', behind the outermost wall 'public'"),
    ("cidr-inner", flow("cidr:10.8.0.0/24", "db"), 33, "enters at tier 'data'"),
    ("port-not-listened", flow("web", "app", "ports = [8001]\n"), 36,
     "'app' does not listen on 8001/tcp"),
    ("udp-port-as-tcp", flow("web", "app", "ports = [9005]\n"), 36,
     "'app' does not listen on 9005/tcp"),
    ("range-too-wide", flow("web", "app", 'ports = ["9000-9011/udp"]\n'), 36,
     "does not listen on 9000-9011/udp"),
    ("bad-port", flow("web", "app", "ports = [70000]\n"), 36, "ports are 1-65535"),
    ("bad-port-text", flow("web", "app", 'ports = ["http"]\n'), 36, "is not a port"),
    ("malformed-cidr", flow("cidr:10.8.0.0/33", "web"), 34, "malformed CIDR"),
    ("cidr-host-bits", flow("cidr:10.8.0.1/24", "web"), 34, "did you mean 'cidr:10.8.0.0/24'?"),
    ("egress-no-ports", flow("app", "internet"), 33, "must list its ports"),
    ("publish-without-flow",
     BASE.replace('image = "myapp:1.0"', 'image = "myapp:1.0"\npublish = ["8000:8000"]'), 17,
     "publishes 8000/tcp but no flow from internet or a CIDR reaches 'app'"),
    ("publish-twice", BASE.replace("listen = [80, 443]",
                                   'listen = [80, 443]\npublish = ["8080:80", "8081:80"]'), 14,
     "80/tcp is already renamed by publish[0]"),
    ("publish-one-host-port-twice",
     BASE.replace("listen = [80, 443]", 'listen = [80, 443]\npublish = ["80:80", "80:443"]'), 14,
     "host port 80/tcp is published by 'web' for container ports 80 and 443"),
    ("owned-extends",
     BASE + '[services.web.compose]\nextends = { file = "x.yaml", service = "y" }\n', 33,
     "castle owns extends: write the inherited keys out in the service"),
    ("owned-secrets", BASE + '[services.web.compose]\nsecrets = ["db-password"]\n', 33,
     "castle owns secrets: use the service's `secrets` key and [compose.secrets]"),
    ("environment-string", BASE + '[services.web.compose]\nenvironment = "A=1"\n', 33,
     "environment must be a table"),
    ("toml-time-passthrough", BASE + "[services.web.compose]\nx-when = 07:32:00\n", 33,
     "a TOML time is not a compose value"),
    ("loopback-pool", BASE.replace('name = "shop"', 'name = "shop"\nsubnet_pool = "127.0.0.0/16"'),
     4, "overlaps 127.0.0.0/8 (loopback)"),
    ("publish-bad", BASE.replace("listen = [80, 443]", 'listen = [80, 443]\npublish = ["x:80"]'),
     14, "is not a publish entry"),
    *((f"publish-variable-{i}", BASE.replace("listen = [80, 443]",
                                             f"listen = [80, 443]\npublish = [{entry!r}]"),
       14, message) for i, (entry, message) in enumerate([
        ("${BIND}:8080:80", "a variable host address is one ${NAME:-VALUE}"),
        ("${BIND:-localhost}:8080:80", "a variable host address is one ${NAME:-VALUE}"),
        ("${BIND:-127.0.0.1;drop}:8080:80", "a variable host address is one ${NAME:-VALUE}"),
        ("${BIND:-300.0.0.1}:8080:80", "'300.0.0.1' is not an IPv4 address"),
        ("${B:-127.0.0.1}${C:-1}:8080:80", "is not a publish entry"),
        ("8080:${PORT}", "a variable container port is one ${NAME:-VALUE}"),
        ("8080:${PORT:?set it}", "a variable container port is one ${NAME:-VALUE}"),
        ("8080:${PORT:-80\"}", "a variable container port is one ${NAME:-VALUE}"),
        ("8080:${PORT:-${OTHER:-80}}", "is not a publish entry"),
        ("${P:-80}:${P:-70000}", "ports are 1-65535"),
        ("${P:-80}:${Q:-80}${R:-1}", "is not a publish entry"),
        ("${P:-80-81}:${P:-80}", "host and container ranges differ in length"),
    ])),
    ("host-port-clash", BASE.replace("listen = [8000,", "publish = [\"80:8000\"]\nlisten = [8000,")
     + FLOW.format(src="internet", dst="app") + "ports = [8000]\nwaiver = \"test\"\n", 17,
     "host port 80/tcp is published by both"),
    ("owned-compose-key", BASE + "[services.web.compose]\nnetworks = [\"default\"]\n", 33,
     "castle owns networks"),
    ("pool-too-small", BASE.replace('name = "shop"', 'name = "shop"\nsubnet_pool = "10.0.0.0/30"'),
     4, "cannot fit"),
    ("bad-pool", BASE.replace('name = "shop"', 'name = "shop"\nsubnet_pool = "10.0.0.0/77"'), 4,
     "subnet_pool"),
    ("outside-to-outside", flow("internet", "cidr:10.0.0.0/8", "ports = [80]\n"), 33,
     "never touches the stack"),
    ("tls-env-bad-ref", BASE.replace('image = "myapp:1.0"',
                                     'image = "myapp:1.0"\ntls_env = { X = "client_cert:web" }'),
     17, "has no tls flow to 'web'"),
    ("empty-tiers", 'version = 1\ntiers = []\n[stack]\nname = "x"\n', 2, "at least one"),
    ("newline-in-description", flow("web", "app", 'description = "a\\nb"\n'), 36,
     "control characters"),
    ("bad-image", BASE.replace('image = "nginx:1.27"', 'image = "nginx; rm -rf /"'), 12,
     "is not an image reference"),
    # more digits than Python converts: a ValueError of the plain reader and of tomllib alike
    ("huge-integer", BASE.replace("listen = [5432]", "listen = [5" + "0" * 5000 + "]"), 21,
     "more than 4300 digits"),
    # a trailing newline: Python's `$` also matches before a final "\n", so an anchored
    # pattern's .match() let these through (into iptables.sh as a broken rule line, into
    # unit names as an internal error); every name and value check is a fullmatch now
    ("newline-service-name", BASE.replace("[services.web]", '[services."web\\n"]')
     .replace('to = "web"', 'to = "web\\n"').replace('from = "web"', 'from = "web\\n"'), 10,
     "is not a DNS-1123 label"),
    ("newline-stack-name", BASE.replace('name = "shop"', 'name = "shop\\n"'), 3,
     "is not a DNS-1123 label"),
    ("newline-tier-name", BASE.replace('name = "data"', 'name = "data\\n"')
     .replace('tier = "data"', 'tier = "data\\n"'), 9, "is not a DNS-1123 label"),
    ("newline-image", BASE.replace('image = "nginx:1.27"', 'image = "nginx:1.27\\n"'), 12,
     "is not an image reference"),
    ("newline-label-key", BASE.replace('image = "nginx:1.27"',
                                       'image = "nginx:1.27"\nlabels = { "app\\n" = "x" }'),
     13, "is not a Kubernetes label key"),
    ("newline-label-value", BASE.replace('image = "nginx:1.27"',
                                         'image = "nginx:1.27"\nlabels = { app = "x\\n" }'),
     13, "is not a Kubernetes label value"),
    ("newline-service-account", BASE.replace(
        'image = "nginx:1.27"', 'image = "nginx:1.27"\nservice_account = "web\\n"'), 13,
     "is not a DNS-1123 label"),
    ("huge-integer-tomllib", BASE.replace("listen = [5432]", "listen = [5" + "0" * 5000
                                          + ']\ndescription = "a\\tb"'), 21,
     "more than 4300 digits"),
]


@pytest.mark.parametrize(("case", "text", "line", "message"), CASES, ids=[c[0] for c in CASES])
def test_broken_spec_is_rejected(tmp_path: Path, case: str, text: str, line: int,
                                 message: str) -> None:
    """Exit 2, the message with the spec's path and line, no traceback, and nothing written."""
    spec = tmp_path / "zones.toml"
    spec.write_text(text)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["generate", str(spec), "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert f"{spec}:{line}:" in result.output, result.output
    assert message in result.output, result.output
    assert "error:" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()
    validate = CliRunner().invoke(app, ["validate", str(spec)])
    assert validate.exit_code == 2
    assert message in validate.output


def test_base_spec_is_valid(tmp_path: Path) -> None:
    """Negative control for the table: the unbroken spec passes."""
    spec = tmp_path / "zones.toml"
    spec.write_text(BASE)
    result = CliRunner().invoke(app, ["validate", str(spec)])
    assert result.exit_code == 0, result.output
    assert "valid: 3 services in 3 tiers" in result.output


def test_all_errors_reported_at_once(tmp_path: Path) -> None:
    """A typo in one table does not hide the rule broken in another."""
    text = (BASE.replace("listen = [80, 443]", "listne = [80, 443]")
            + FLOW.format(src="db", dst="app") + "ports = [8000]\n"
            + FLOW.format(src="web", dst="dbb"))
    spec = tmp_path / "zones.toml"
    spec.write_text(text)
    result = CliRunner().invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2
    assert "unknown field 'listne'" in result.output
    assert "unknown service 'dbb'; did you mean 'db'?" in result.output
    assert "'db' -> 'app' goes outward" in result.output
    assert "3 errors" in result.output


def test_waiver_allows_a_wall_crossing(tmp_path: Path) -> None:
    """waiver = "why" turns a wall error into an accepted, documented exception."""
    spec = tmp_path / "zones.toml"
    spec.write_text(flow("web", "db", 'waiver = "legacy report job, ticket 42"\n'))
    result = CliRunner().invoke(app, ["validate", str(spec)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("extra", "warning"), [
    ('[services.lonely]\ntier = "data"\nimage = "x"\n', "reaches nothing and nothing reaches it"),
    ('[[tiers]]\nname = "vault"\n', "tier 'vault' has no services"),
    (FLOW.format(src="web", dst="app") + "ports = [8000]\n", "allows nothing that flows[1]"),
    (FLOW.format(src="db", dst="internet") + "ports = [443]\n", "innermost tier"),
    ('[services.worker]\ntier = "backend"\nimage = "w:1"\n'
     + FLOW.format(src="web", dst="tier:backend"), "'worker' listens on no port: this flow opens"),
    ('[services.admin]\ntier = "backend"\nimage = "a:1"\nlisten = [80]\n'
     'tls_env = { X = "=1" }\n' + FLOW.format(src="web", dst="admin"), "in no tls flow"),
])
def test_warnings_do_not_block(tmp_path: Path, extra: str, warning: str) -> None:
    """Warnings are printed with their line, and the spec still validates (exit 0)."""
    spec = tmp_path / "zones.toml"
    spec.write_text(BASE + extra)
    result = CliRunner().invoke(app, ["validate", str(spec)])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and warning in result.output


def test_missing_file_and_folder(tmp_path: Path) -> None:
    """A spec path that is not a file is a usage error, not a crash."""
    for path in (tmp_path / "nope.toml", tmp_path):
        result = CliRunner().invoke(app, ["validate", str(path)])
        assert result.exit_code == 2
        assert "castle:" in result.output and "Traceback" not in result.output


def test_not_utf8(tmp_path: Path) -> None:
    """Binary input is reported as such, with a line."""
    spec = tmp_path / "zones.toml"
    spec.write_bytes(b'version = 1\n\xff\xfe\n')
    result = CliRunner().invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2
    assert f"{spec}:2:" in result.output and "not UTF-8" in result.output


def test_bom_is_accepted(tmp_path: Path) -> None:
    """A spec saved with a UTF-8 byte order mark reads like one without."""
    spec = tmp_path / "zones.toml"
    spec.write_bytes(b"\xef\xbb\xbf" + BASE.encode())
    assert CliRunner().invoke(app, ["validate", str(spec)]).exit_code == 0


def test_no_false_tls_errors_after_a_rejected_flow(tmp_path: Path) -> None:
    """A bad field in a tls flow is one error, not a cascade about tls_env references."""
    text = (BASE.replace('to = "db"\n', 'to = "db"\ntls = true\nwaiver = "a\\tb"\n')
            .replace('image = "myapp:1.0"',
                     'image = "myapp:1.0"\ntls_env = { X = "client_cert:db" }'))
    spec = tmp_path / "zones.toml"
    spec.write_text(text)
    result = CliRunner().invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2
    assert "control characters" in result.output
    assert "1 error;" in result.output, result.output


INLINE_FLOWS = """\
version = 1
flows = [
  { from = "internet", to = "web" },
  # a comment [ with a bracket
  { from = "web", to = "db" },
  { from = "internet", to = "web", ports = [81] },
]
[stack]
name = "x"
[[tiers]]
name = "a"
[[tiers]]
name = "b"
[[tiers]]
name = "c"
[services]
web = { tier = "a", image = "nginx", listen = [80] }
db = { tier = "c", image = "pg", listen = [5432] }
"""


@pytest.mark.parametrize(("text", "expected"), [
    (INLINE_FLOWS, [":5: error: flows[1]: 'web' -> 'db' skips the wall 'b'",
                    ":6: error: flows[2].ports[0]: 'web' does not listen on 81/tcp"]),
    (BASE + '[[flow]]\nfrom = "web"\nto = "app"\n', [":33: error: flow: unknown field 'flow'"]),
    (BASE.replace("version = 1", "version = true"), [":1: error: version: unsupported"]),
    (BASE.replace('to = "db"\n', 'to = "db"\ntls = "yes"\n'), [":33: error: flows[2].tls:"]),
    (BASE.replace("listen = [5432]", 'listen = ["５４３２"]'), [":21: error: services.db.listen"]),
    (BASE.replace("listen = [5432]", "listen = [5432.0]"), ["5432.0 is not a port"]),
    (BASE.replace('name = "shop"', 'name = "' + "s" * 60 + '"')
     + "[kubernetes]\ntier_namespaces = true\n", [":34: error: kubernetes.tier_namespaces:"]),
    (BASE + '[kubernetes]\ningress_namespace = "shop"\n',
     [":34: error: kubernetes.ingress_namespace: ingress_namespace 'shop' is a namespace of "
      "this stack"]),
])
def test_acceptance_findings(tmp_path: Path, text: str, expected: list[str]) -> None:
    """Lines inside arrays of inline tables, misspelt array tables, strict types, ASCII
    digits, and limits generate would hit are all reported by validate, with their line."""
    spec = tmp_path / "zones.toml"
    spec.write_text(text)
    result = CliRunner().invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2, result.output
    for fragment in expected:
        assert fragment in result.output, result.output


QUOTED: list[tuple[str, str, int, list[str]]] = [
    # (id, spec text, line, the user's own text the message must quote, as written there)
    ("publish-renamed-without-flow",
     BASE.replace("ports = [80, 443]", "ports = [80]")
     .replace("listen = [80, 443]", 'listen = [80, 443]\npublish = ["8443:443"]'), 14,
     ['"8443:443"']),
    ("publish-renamed-twice",
     BASE.replace("listen = [80, 443]", 'listen = [80, 443]\npublish = ["8080:80", "8081:80"]'),
     14, ['"8081:80"', '"8080:80"']),
    ("tier-selector-skips-a-wall", flow("tier:public", "db"), 33,
     ['from = "tier:public"', 'to = "db"']),
    ("publish-clash",
     BASE.replace("listen = [80, 443]", 'listen = [80, 443]\npublish = ["80:80", "80:443"]'), 14,
     ['"80:80"', '"80:443"']),
    ("list-goes-outward", BASE + '[[flows]]\nfrom = "db"\nto = ["app", "web"]\n', 33,
     ['from = "db"', 'to = ["app", "web"]']),
]


@pytest.mark.parametrize(("case", "text", "line", "quoted"), QUOTED, ids=[c[0] for c in QUOTED])
def test_error_quotes_the_users_text(tmp_path: Path, case: str, text: str, line: int,
                                     quoted: list[str]) -> None:
    """The message quotes the entry or flow as the user wrote it, at the line castle names:
    each quoted piece is in the message and verbatim in the spec's table at that line."""
    spec = tmp_path / "zones.toml"
    spec.write_text(text)
    result = CliRunner().invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2, result.output
    message = next(m for m in result.output.splitlines() if m.startswith(f"{spec}:{line}: error"))
    table = spec.read_text().splitlines()[line - 1:line + 3]
    for piece in quoted:
        assert piece in message, (piece, message)
        assert any(piece in row for row in table), (piece, table)


def test_publish_error_names_the_host_port(tmp_path: Path) -> None:
    """publish = ["8443:443"] without a flow to 443: the message names 8443, which a search of
    the file finds; the old reading ("publishes 443/tcp") alone would not (negative control)."""
    spec = tmp_path / "zones.toml"
    spec.write_text(QUOTED[0][1])
    result = CliRunner().invoke(app, ["validate", str(spec)])
    (message,) = [m for m in result.output.splitlines() if ":14: error:" in m]
    assert "8443" in message and "8443" in spec.read_text().splitlines()[13]
    assert "8443" not in "publishes 443/tcp but no flow from internet or a CIDR reaches 'web'"
