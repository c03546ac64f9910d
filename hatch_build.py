"""castle's build hook: templates/ compiled to Python modules (castle/_jinja) at build time.

A wheel carries them as castle/_jinja; an editable install writes them into the source
tree's castle/_jinja. castle uses a module only while its key matches the template's
source (castle/io/compiled.py), so an edited template is never served stale.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CompileTemplates(BuildHookInterface):  # type: ignore[misc]
    """Compile every template with castle's own Jinja environment."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Write the modules and have the wheel carry them."""
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        sys.path.insert(0, str(root))
        try:
            from castle.io import compiled, render

            environment = render.environment()
            if version == "editable":
                compiled.compile_all(environment, root / "templates", root / "castle" / "_jinja")
                return
            self._tmp = Path(tempfile.mkdtemp(prefix="castle-jinja-"))
            for path in compiled.compile_all(environment, root / "templates", self._tmp):
                build_data["force_include"][str(path)] = f"castle/_jinja/{path.name}"
        finally:
            sys.path.remove(str(root))
            for name in [m for m in sys.modules if m == "castle" or m.startswith("castle.")]:
                del sys.modules[name]

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        """Remove the temporary folder of a wheel build."""
        tmp = getattr(self, "_tmp", None)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
