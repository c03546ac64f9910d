"""Imported stacks on a real Docker Engine: they come up, and services find each other by
the names the original file gave them; two stacks with default settings run side by side.

The oracle is the engine itself (its embedded DNS, its bridges and address pools) and real
sockets: a busybox `nc` in one container talks to an echo server in another.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from castle.targets.generate import generate
from castle.views.importer import import_compose
from tests.engine import Engine

pytestmark = pytest.mark.engine

CORPUS = Path(__file__).resolve().parent / "data" / "corpus"
# Service names that are not DNS labels: castle renames them and keeps the old ones as aliases.
UNDERSCORED = """\
services:
  my_app:
    image: example/app:1
    environment:
      DATABASE_URL: postgres://my_db:5432/app
    ports: ["8088:80"]
  my_db:
    image: postgres:16
"""


def _draft(compose: list[Path], folder: Path) -> tuple[Path, dict[str, object]]:
    """Import into `folder`, generate compose into folder/out; (out, compose.yaml as read)."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "zones.toml"
    spec.write_text(import_compose(compose, folder))
    out = folder / "out"
    generate(spec, out, targets=["compose"])
    return out, yaml.safe_load((out / "compose.yaml").read_text())


def _up(eng: Engine, out: Path, doc: dict[str, object], project: str) -> None:
    services = doc["services"]
    assert isinstance(services, dict)
    eng.tag_probe(*sorted({str(s["image"]) for s in services.values()}))
    eng.up(out, project)


def _talks(eng: Engine, project: str, src: str, host: str, port: int) -> bool:
    """True when `src` reaches an echo server at host:port through the engine's DNS."""
    box = eng.container(project, src)
    run = eng.exec(box, "sh", "-c", f"echo castle-{port} | nc -w 2 {host} {port}", check=False)
    return f"castle-{port}" in run.stdout


def test_imported_stack_reaches_by_original_names(docker_engine: Engine,
                                                  tmp_path: Path) -> None:
    """gitea finds its database as `db:5432` (its DB_HOST); a renamed `my_db` still answers
    to `my_db`; a pair the walls closed cannot talk (negative control)."""
    eng = docker_engine
    out, doc = _draft([CORPUS / "awesome-gitea-postgres" / "compose.yaml"], tmp_path / "g")
    project = str(doc["name"])
    _up(eng, out, doc, project)
    try:
        eng.serve(eng.container(project, "db"), [(5432, "tcp")])
        eng.serve(eng.container(project, "gitea"), [(3000, "tcp")])
        assert _talks(eng, project, "gitea", "db", 5432)
        assert not _talks(eng, project, "gitea", "db", 5433)  # nobody serves it
    finally:
        eng.down(out, project)
    folder = tmp_path / "u"
    folder.mkdir()
    (folder / "compose.yaml").write_text(UNDERSCORED)
    out, doc = _draft([folder / "compose.yaml"], folder / "draft")
    project = str(doc["name"])
    services = doc["services"]
    assert isinstance(services, dict) and set(services) == {"my-app", "my-db"}
    _up(eng, out, doc, project)
    try:
        eng.serve(eng.container(project, "my-db"), [(5432, "tcp")])
        assert _talks(eng, project, "my-app", "my_db", 5432)  # the name the app was given
        assert _talks(eng, project, "my-app", "my-db", 5432)
        assert not _talks(eng, project, "my-app", "no_such_db", 5432)
    finally:
        eng.down(out, project)


def test_two_default_stacks_side_by_side(docker_engine: Engine, tmp_path: Path) -> None:
    """Two imported stacks with default pools come up together; pinned onto one pool, the
    engine refuses the second (negative control)."""
    eng = docker_engine
    stacks = []
    for case in ("awesome-gitea-postgres", "awesome-postgresql-pgadmin"):
        out, doc = _draft([CORPUS / case / "compose.yaml"], tmp_path / case)
        stacks.append((out, doc, str(doc["name"])))
    try:
        for out, doc, project in stacks:
            _up(eng, out, doc, project)
        for _out, doc, project in stacks:
            services = doc["services"]
            assert isinstance(services, dict)
            for svc in services:
                eng.container(project, svc)  # exactly one running
    finally:
        for out, _, project in stacks:
            eng.down(out, project)
    # negative control: the second stack on the first one's subnets
    (out_a, doc_a, project_a), (out_b, _, project_b) = stacks
    nets_a = doc_a["networks"]
    assert isinstance(nets_a, dict)
    subnet = next(iter(nets_a.values()))["ipam"]["config"][0]["subnet"]
    clash = tmp_path / "clash"
    spec = tmp_path / "awesome-postgresql-pgadmin" / "zones.toml"
    clash.mkdir()
    pinned = clash / "zones.toml"
    pinned.write_text(spec.read_text().replace(
        "[stack]\n", f'[stack]\nsubnet_pool = "{subnet}"\n', 1))
    generate(pinned, clash / "out", targets=["compose"])
    _up(eng, out_a, doc_a, project_a)
    try:
        run = eng.compose(clash / "out", project_b, "up", "-d", "--no-build", "--pull", "never",
                          check=False)
        assert run.returncode != 0 and "overlaps" in (run.stdout + run.stderr).lower(), run
    finally:
        eng.compose(clash / "out", project_b, "down", "--remove-orphans", "-t", "1",
                    check=False)
        eng.down(out_a, project_a)
