"""A container's file system and network for real TLS servers, without a container engine.

compose.yaml says which file each service sees at which path; `Box` copies exactly those
files (the generated configs and the TLS folder's secrets, owner and mode kept, as a bind
mount keeps them) below a folder of its own and rewrites container paths to that folder.
Everything runs in a network namespace the test made, whose /etc/hosts (ip netns exec's
/etc/netns/NAME/hosts) names the stack's services at 127.0.0.1: servers listen on its
loopback with the ports castle generated, and clients dial the names castle wrote.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from castle.tls.recipes import CONFIG_DIR, SECRETS_DIR, STAGING_DIR

PREFIXES = (STAGING_DIR + "/", SECRETS_DIR + "/", CONFIG_DIR + "/", "/etc/nginx/",
            "/etc/mysql/", "/docker-entrypoint-initdb.d/")


def skip_reason(*commands: str) -> str | None:
    """Why these tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root: network namespaces and servers that switch to their own user"
    missing = [c for c in commands if shutil.which(c) is None and not os.access(c, os.X_OK)]
    if missing:
        return f"missing {', '.join(missing)} (scripts/test.sh installs them)"
    if shutil.which("ip") is None:
        return "missing ip (iproute2)"
    return None


class Box:
    """One service's file system view: container path -> a path below `root`."""

    def __init__(self, out: Path, project: dict[str, Any], service: str, root: Path) -> None:
        self.out, self.service, self.root = out, service, root
        self.spec = project["services"][service]
        for kind in ("secrets", "configs"):
            for mount in self.spec.get(kind, []):
                target = mount["target"]
                if not target.startswith("/"):
                    target = f"{SECRETS_DIR}/{target}"
                source = out / project[kind][mount["source"]]["file"]
                dest = self.path(target)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, dest)  # mode kept, as a bind mount keeps it
                st = source.stat()
                os.chown(dest, st.st_uid, st.st_gid)

    def path(self, container_path: str) -> Path:
        """Where a container path lives in this box."""
        return self.root / container_path.lstrip("/")

    def rewrite(self, text: str) -> str:
        """Container paths in a command, a value or a file, moved into the box."""
        for prefix in PREFIXES:
            text = text.replace(prefix, str(self.path(prefix)) + "/")
        return text

    def env(self) -> dict[str, str]:
        """The service's environment from compose.yaml, paths moved into the box."""
        env = self.spec.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        return {k: self.rewrite(str(v)) for k, v in env.items()}

    def command(self) -> list[str]:
        """The service's command from compose.yaml, paths moved into the box."""
        return [self.rewrite(str(c)) for c in self.spec.get("command") or []]

    def rewrite_file(self, container_path: str) -> Path:
        """Move the container paths inside a mounted file into the box; return its path."""
        path = self.path(container_path)
        st = path.stat()
        path.write_text(self.rewrite(path.read_text()))
        os.chmod(path, st.st_mode & 0o7777)
        return path


def load_compose(out: Path) -> dict[str, Any]:
    """compose.yaml as data."""
    data: dict[str, Any] = yaml.safe_load((out / "compose.yaml").read_text())
    return data


@contextmanager
def netns(names: Sequence[str]) -> Iterator[str]:
    """A fresh network namespace with loopback up and /etc/hosts naming `names` 127.0.0.1."""
    name = f"castle-tls-{os.getpid()}"
    etc = Path("/etc/netns") / name
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text("127.0.0.1 localhost " + " ".join(names) + "\n")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        shutil.rmtree(etc, ignore_errors=True)


def in_ns(ns: str, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a command inside the namespace; never raises on its exit code."""
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=60, check=False, **kw)


def start(ns: str, argv: Sequence[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
    """Start a server inside the namespace, its output to `log`."""
    with log.open("wb") as fh:
        return subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True, **kw)


def wait_port(ns: str, port: int, proc: subprocess.Popen[bytes], log: Path,
              seconds: float = 60) -> None:
    """Wait until something listens on 127.0.0.1:port in the namespace (or fail, with the log)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}:\n{log.read_text()}")
        probe = in_ns(ns, ["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"])
        if probe.returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port}:\n{log.read_text()}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server started by `start` (its whole process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=10)


def scratch() -> Path:
    """A folder that servers running as their own users can reach (pytest's is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="castle-tls-"))
    path.chmod(0o755)
    return path


def user_shim(folder: Path, name: str, user: str, prepend: str = "") -> Path:
    """An executable `name` in `folder` that drops to `user` and runs its arguments, as the
    official images' entrypoints (gosu) do; `prepend` names the server when the command is
    flags only, as those entrypoints do for a first argument that starts with '-'."""
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / name
    lead = (f'case "$1" in -*) set -- {prepend} "$@";; esac\n' if prepend else "")
    shim.write_text("#!/bin/sh\n" + lead
                    + f'exec setpriv --reuid={user} --regid={user} --init-groups "$@"\n')
    shim.chmod(0o755)
    return shim


def gosu_shim(folder: Path) -> Path:
    """`gosu USER CMD...` (what the official images install), done with util-linux's setpriv."""
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "gosu"
    shim.write_text('#!/bin/sh\nuser=$1\nshift\n'
                    'exec setpriv --reuid="$user" --regid="$user" --init-groups "$@"\n')
    shim.chmod(0o755)
    return shim
