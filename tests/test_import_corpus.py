"""Real compose files through the whole round trip: audit, import, validate, generate.

Each corpus stack (tests/data/corpus, sources in its README) is judged by oracles that do
not come from castle: compose-go normalizes the original and the regenerated file (same
service keys apart from the ones castle owns, same top-level objects, every local file
found again), and tests/oracles/compose_reach.py recomputes who reaches whom in both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from castle.spec.load import load
from castle.targets.generate import generate
from castle.views.audit import audit
from castle.views.importer import import_compose
from tests.oracles import compose_go, compose_reach
from tests.test_import import closed_pairs

CORPUS = Path(__file__).resolve().parent / "data" / "corpus"
# (folder, files in compose's order); a single default-named file brings its override
CASES: dict[str, tuple[str, tuple[str, ...]]] = {
    **{d.name: (d.name, ("compose.yaml",)) for d in sorted(CORPUS.glob("awesome-*"))},
    "netbox": ("netbox", ("docker-compose.yml",)),
    "netbox-test": ("netbox", ("docker-compose.test.yml", "docker-compose.test.override.yml")),
    "appwrite": ("appwrite", ("docker-compose.yml",)),  # + docker-compose.override.yml
    "otel-demo": ("otel-demo", ("compose.yaml",)),
    "temporal-multirole": ("temporal", ("docker-compose-multirole.yaml",)),
    "temporal-postgres": ("temporal", ("docker-compose-postgres.yml",)),
    "frappe": ("frappe", ("compose.yaml", "overrides/compose.mariadb.yaml",
                          "overrides/compose.redis.yaml", "overrides/compose.noproxy.yaml")),
    "redash": ("redash", ("compose.yaml",)),
    "saleor": ("saleor", ("docker-compose.yml",)),
    "zulip": ("zulip", ("compose.yaml",)),
    "docker-elk": ("docker-elk", ("docker-compose.yml",)),
    "jitsi": ("jitsi", ("docker-compose.yml",)),
    "include": ("compose-go-include", ("compose.yaml",)),
    "dockprom": ("dockprom", ("docker-compose.yml",)),
    "dockprom-exporters": ("dockprom", ("docker-compose.exporters.yml",)),  # two on the host
    "compose-network-test": ("compose-network-test", ("compose.yaml",)),  # service:db
    "compose-watch": ("compose-watch", ("with-external-network.yaml",)),  # no build context
    "compose-bridge": ("compose-bridge", ("compose.yaml",)),
    "compose-oci-extends": ("compose-oci-extends", ("compose.yaml",)),
    "voting-app": ("voting-app", ("docker-compose.yml",)),
    "kong": ("kong", ("docker-compose.yml",)),
    "n8n-ai-starter": ("n8n-ai-starter", ("docker-compose.yml",)),
    "langfuse": ("langfuse", ("docker-compose.yml",)),
    "defectdojo": ("defectdojo", ("docker-compose.yml",)),
    "kafka-stack": ("kafka-stack", ("full-stack.yml",)),
    "edgex": ("edgex", ("docker-compose.yml",)),
    "magistrala": ("magistrala", ("docker-compose.yaml",)),
    "robot-shop": ("robot-shop", ("docker-compose.yaml",)),
    "docker-mailserver": ("docker-mailserver", ("compose.yaml",)),
    "hoppscotch": ("hoppscotch", ("docker-compose.yml",)),  # profiles as alternatives
    "hoppscotch-deploy": ("hoppscotch", ("docker-compose.deploy.yml",)),
}
# Keys castle writes itself: the walls (networks, ports) and what it derives them from.
OWNED = {"networks", "ports", "expose", "network_mode", "links", "external_links"}
DEFAULT_OVERRIDE = {"docker-compose.yml": "docker-compose.override.yml",
                    "compose.yaml": "compose.override.yaml"}


def _files(folder: str, names: tuple[str, ...]) -> list[Path]:
    return [CORPUS / folder / n for n in names]


def _original(files: list[Path]) -> dict[str, Any] | None:
    """compose-go's model of the original as `docker compose` in its folder reads it."""
    more = files[1:]
    if len(files) == 1 and files[0].name in DEFAULT_OVERRIDE:
        override = files[0].with_name(DEFAULT_OVERRIDE[files[0].name])
        more = [override] if override.is_file() else []
    try:
        return compose_go.config_json(files[0], more=more, all_profiles=True)
    except compose_go.OracleError:
        return None


def _renames(text: str) -> dict[str, str]:
    """Original service name -> draft name, from the draft's aliases."""
    import tomllib

    data = tomllib.loads(text)
    out = {}
    for name, svc in data["services"].items():
        out[name] = name
        for alias in svc.get("aliases", []):
            out[alias] = name
    return out


def _local_refs(project: dict[str, Any]) -> dict[tuple[str, ...], str]:
    """Every local path compose-go resolved: build contexts, bind sources, env files,
    config and secret files, keyed by where they appear."""
    refs: dict[tuple[str, ...], str] = {}
    for name, svc in project.get("services", {}).items():
        build = svc.get("build") or {}
        if isinstance(build.get("context"), str) and build["context"].startswith("/"):
            refs[(name, "build")] = build["context"]
        for i, vol in enumerate(svc.get("volumes") or []):
            if vol.get("type") == "bind":
                refs[(name, "volume", str(i))] = vol["source"]
        for i, env in enumerate(svc.get("env_file") or []):
            refs[(name, "env_file", str(i))] = env["path"]
    for kind in ("configs", "secrets"):
        for name, obj in (project.get(kind) or {}).items():
            if obj.get("file"):
                refs[(kind, name)] = obj["file"]
    return refs


def _comparable(svc: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """A normalized service less the keys castle owns, its depends_on in draft names."""
    out = {k: v for k, v in svc.items() if k not in OWNED}
    if "depends_on" in out:
        out["depends_on"] = {names.get(k, k): v for k, v in out["depends_on"].items()}
    return out


def flow_pairs(text: str) -> set[frozenset[str]]:
    """Every pair of services a [[flows]] entry of the draft lets talk (either direction)."""
    import tomllib

    def ends(value: str | list[str]) -> list[str]:
        return [value] if isinstance(value, str) else list(value)

    data = tomllib.loads(text)
    return {frozenset((a, b)) for f in data.get("flows", []) for a in ends(f["from"])
            for b in ends(f["to"]) if a in data["services"] and b in data["services"]}


def host_pairs(text: str) -> set[frozenset[str]]:
    """Pairs of a flow from a service that was on the host network (it reached published
    ports through the host, which shares no compose network)."""
    import tomllib

    data = tomllib.loads(text)
    blocks = text.split("[[flows]]")[1:]
    return {frozenset((f["from"], f["to"])) for f, block in zip(data.get("flows", []), blocks,
                                                               strict=True)
            if "was on the host network" in block}


def _mapped(pairs: set[frozenset[str]], names: dict[str, str]) -> set[frozenset[str]]:
    return {frozenset(names.get(s, s) for s in pair) for pair in pairs}


@pytest.fixture(scope="module")
def compose_ok() -> None:
    """compose-go must be there: CI installs it (pyproject's test extra)."""
    reason = compose_go.skip_reason()
    if reason:
        pytest.skip(reason)


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip(case: str, tmp_path: Path, compose_ok: None) -> None:
    """audit, import, validate, generate; then the output is the original, walled."""
    folder, names = CASES[case]
    files = _files(folder, names)
    # audit in every format
    for fmt in ("text", "json", "sarif"):
        report = audit(files, None, fmt).report
        if fmt != "text":
            json.loads(report)
    # import into another folder than the stack's, generate into a third one
    spec = tmp_path / "spec" / "zones.toml"
    spec.parent.mkdir()
    text = import_compose(files, spec.parent)
    assert import_compose(files, spec.parent) == text  # deterministic
    spec.write_text(text)
    load(spec)
    out = tmp_path / "out"
    generate(spec, out, targets=["compose"])
    original = _original(files)
    if original is None:
        # compose rejects the original itself: castle still drafts and says so
        assert "compose-go rejected the file" in text
        return
    dotenv = CORPUS / folder / ".env"
    made = compose_go.config_json(out / "compose.yaml",
                                  env_file=dotenv if dotenv.is_file() else None,
                                  all_profiles=True)
    names = _renames(text)
    # no service renamed without its old name kept as an alias
    assert set(names) >= set(original["services"]), set(original["services"]) - set(names)
    # every local reference resolves to the same file from the output
    before, after = _local_refs(original), _local_refs(made)
    renamed = {(names.get(k[0], k[0]), *k[1:]): v for k, v in before.items()}
    assert set(after) == set(renamed)
    head = text.split("\nversion = 1", 1)[0]
    for key in sorted(k for k in after if after[k] != renamed[k]):
        # a path in a variable cannot move with the file: the draft must say so
        was = next(n for n, m in names.items() if m == key[0] and n in original["services"])
        assert f"{was!r}: paths held in variables" in head, key
        if key[1] == "volume":  # named: compare the rest of the service as if it moved
            made["services"][key[0]]["volumes"][int(key[2])]["source"] = renamed[key]
    # every service key castle does not own survives, top-level objects too
    for name, svc in original["services"].items():
        mine = _comparable(made["services"][names[name]], names)
        if "image" not in svc and "build" in svc:
            # castle names the image compose would have built: PROJECT-SERVICE
            assert mine.pop("image") == f"{made['name']}-{names[name]}"
        assert mine == _comparable(svc, names), name
    for kind in ("volumes", "configs", "secrets"):
        assert made.get(kind) == original.get(kind), kind
    # reachability: the original's, less only the pairs the draft names as closed, both in
    # the draft's flows and in the networks of the generated file
    was = _mapped(compose_reach.reach(original).pairs, names)
    closed = closed_pairs(text, was)
    flows = flow_pairs(text)
    assert closed <= was and closed.isdisjoint(flows), (closed - was, closed & flows)
    assert flows - was <= host_pairs(text), flows - was  # through the host, not a network
    assert (flows & was) | closed == was, was - flows - closed
    now = compose_reach.reach(made).pairs
    assert now <= was, now - was
    assert was - now == closed


def test_negative_control_paths_not_moved(tmp_path: Path, compose_ok: None) -> None:
    """Negative control: the same draft rendered as if the output were the spec's folder
    (paths not moved) points compose at files that are not the original's."""
    from castle.plan import compile_plan
    from castle.spec.load import load as load_spec
    from castle.targets import outputs

    files = _files("awesome-nginx-golang-mysql", ("compose.yaml",))
    spec = tmp_path / "spec" / "zones.toml"
    spec.parent.mkdir()
    spec.write_text(import_compose(files, spec.parent))
    out = tmp_path / "out" / "deeper"  # not a sibling of the spec's folder
    out.mkdir(parents=True)
    plan = compile_plan(load_spec(spec), ["compose"], ".")
    (out / "compose.yaml").write_text(outputs(plan)[0].content)
    made = compose_go.config_json(out / "compose.yaml")
    before = _local_refs(_original(files) or {})
    assert before and set(_local_refs(made).values()).isdisjoint(before.values())


def test_negative_control_closed_pairs_are_counted(tmp_path: Path, compose_ok: None) -> None:
    """Negative control: a draft whose header lists no closed pair fails the reachability
    comparison of a stack whose draft closes a pair."""
    files = _files("awesome-react-rust-postgres", ("compose.yaml",))
    text = import_compose(files, tmp_path)
    names = _renames(text)
    original = _original(files)
    assert original is not None
    spec = tmp_path / "zones.toml"
    spec.write_text(text)
    generate(spec, tmp_path / "out", targets=["compose"])
    made = compose_go.config_json(tmp_path / "out" / "compose.yaml")
    was = _mapped(compose_reach.reach(original).pairs, names)
    now = compose_reach.reach(made).pairs
    assert was - now == closed_pairs(text, was) != set()
    assert closed_pairs(text.replace("closed by the walls", "kept"), was) != was - now
    # a draft that lost a flow between two services no longer adds up to the original
    head, first, rest = text.partition("\n[[flows]]\n")
    kept = [b for b in rest.split("\n[[flows]]\n") if '"internet"' in b]
    dropped = head + "".join(f"\n[[flows]]\n{b}" for b in kept)
    assert flow_pairs(text) & was and not flow_pairs(dropped) & was
    assert (flow_pairs(dropped) & was) | closed_pairs(dropped, was) != was


def test_default_pools_differ_per_stack(tmp_path: Path, compose_ok: None) -> None:
    """Two imported stacks with default settings get subnets that do not overlap (compose-go
    reads them back), and `castle validate` warns when two specs in one folder do overlap."""
    import ipaddress

    from typer.testing import CliRunner

    from castle.cli import app

    subnets = []
    for case in ("awesome-wordpress-mysql", "awesome-gitea-postgres"):
        folder = tmp_path / case
        folder.mkdir()
        spec = folder / "zones.toml"
        spec.write_text(import_compose(_files(case, ("compose.yaml",)), folder))
        generate(spec, folder / "out", targets=["compose"])
        made = compose_go.config_json(folder / "out" / "compose.yaml")
        subnets.append({ipaddress.ip_network(c["subnet"]) for n in made["networks"].values()
                        for c in n["ipam"]["config"]})
    assert all(not a.overlaps(b) for a in subnets[0] for b in subnets[1])
    # negative control: the same two specs in one folder, one pinned onto the other's pool
    both = tmp_path / "both"
    both.mkdir()
    first = both / "a.toml"
    first.write_text((tmp_path / "awesome-wordpress-mysql" / "zones.toml").read_text())
    second = (tmp_path / "awesome-gitea-postgres" / "zones.toml").read_text()
    runner = CliRunner()
    (both / "b.toml").write_text(second)
    quiet = runner.invoke(app, ["validate", str(first)])
    assert quiet.exit_code == 0 and "overlaps" not in quiet.output, quiet.output
    pool = next(iter(subnets[0])).supernet(new_prefix=16)
    (both / "b.toml").write_text(second.replace("[stack]\n", f'[stack]\nsubnet_pool = "{pool}"\n'))
    loud = runner.invoke(app, ["validate", str(first)])
    assert loud.exit_code == 0 and f"overlaps {pool} of stack" in loud.output, loud.output


def test_cli_file_options_merge_like_compose(tmp_path: Path, compose_ok: None) -> None:
    """`castle import -f A -f B` is the library's merge of [A, B]; no file is a usage error
    (exit 2); a default-named file alone brings its override file."""
    from typer.testing import CliRunner

    from castle.cli import app

    files = _files("netbox", ("docker-compose.test.yml", "docker-compose.test.override.yml"))
    out = tmp_path / "zones.toml"
    run = CliRunner().invoke(app, ["import", "-f", str(files[0]), "-f", str(files[1]),
                                   "-o", str(out)])
    assert run.exit_code == 0, run.output
    assert out.read_text() == import_compose(files, tmp_path)
    assert out.read_text() != import_compose(files[:1], tmp_path)  # the override counts
    assert CliRunner().invoke(app, ["import"]).exit_code == 2
    base = _files("appwrite", ("docker-compose.yml",))
    both = _files("appwrite", ("docker-compose.yml", "docker-compose.override.yml"))
    assert import_compose(base, tmp_path) == import_compose(both, tmp_path)


def test_bind_volume_device_moves(tmp_path: Path, compose_ok: None) -> None:
    """A local-driver volume bound to a folder (`o: bind`, relative `device`) is a local
    path: compose-go resolves it from the same folder for the original and the output."""
    stack = tmp_path / "stack"
    stack.mkdir()
    (stack / "compose.yaml").write_text(
        "services:\n  db:\n    image: postgres\n    volumes:\n      - pgdata:/var/lib/data\n"
        "volumes:\n  pgdata:\n    driver: local\n    driver_opts:\n      type: none\n"
        "      o: bind\n      device: ./data/pg\n  other:\n    driver_opts: {o: bind, "
        "device: ./kept}\n")
    spec = tmp_path / "spec" / "zones.toml"
    spec.parent.mkdir()
    spec.write_text(import_compose([stack / "compose.yaml"], spec.parent))
    generate(spec, tmp_path / "out" / "deeper", targets=["compose"])
    made = compose_go.config_json(tmp_path / "out" / "deeper" / "compose.yaml")
    original = _original([stack / "compose.yaml"])
    assert original is not None
    device = original["volumes"]["pgdata"]["driver_opts"]["device"]
    assert device == str(stack / "data" / "pg")
    assert made["volumes"] == original["volumes"]
    # negative control: the same output left unmoved resolves elsewhere
    text = (tmp_path / "out" / "deeper" / "compose.yaml").read_text()
    import re

    unmoved_text, n = re.subn(r'"[./]*stack/data/pg"', '"./data/pg"', text)
    assert n == 1, text
    (tmp_path / "out" / "deeper" / "compose.yaml").write_text(unmoved_text)
    unmoved = compose_go.config_json(tmp_path / "out" / "deeper" / "compose.yaml")
    assert unmoved["volumes"]["pgdata"]["driver_opts"]["device"] != device
