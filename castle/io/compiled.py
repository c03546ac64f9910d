"""Templates compiled to Python ahead of time (castle/_jinja), used only while they still match.

`pip install .` and `pip install -e .` run hatch_build.py, which writes each template of
templates/ as the Python module Jinja would compile it to, plus the key it was made from:
the SHA-256 of the template's source, Jinja's version and the environment's options that
shape the code. At run time a template is taken from its module only when that key equals
the key of the source on disk; an edited template, another Jinja or other options make
the loader compile the source as before (through the bytecode cache), never use the stale
module.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2

PACKAGE = "castle._jinja"  # where the modules live (git-ignored: made by the build)
FOLDER = Path(__file__).resolve().parent.parent / "_jinja"


def module_name(template: str) -> str:
    """The module of a template: tls/client.cnf.j2 -> tmpl_tls__client_cnf_j2."""
    return "tmpl_" + "".join(c if c.isalnum() else "__" if c == "/" else "_" for c in template)


def key(environment: jinja2.Environment, source: str) -> str:
    """What a compiled module must have been made from to stand for this source."""
    import jinja2

    e = environment
    shape = repr((
        jinja2.__version__, e.block_start_string, e.block_end_string,
        e.variable_start_string, e.variable_end_string, e.comment_start_string,
        e.comment_end_string, e.line_statement_prefix, e.line_comment_prefix, e.trim_blocks,
        e.lstrip_blocks, e.newline_sequence, e.keep_trailing_newline, e.autoescape,
        e.optimized, sorted(e.extensions), sorted(e.filters), sorted(e.tests), e.is_async,
        # a finalize function is called from the generated code, which says how it is passed
        # (not its address: the same function in another run has another one)
        None if e.finalize is None else (getattr(e.finalize, "__module__", None),
                                         getattr(e.finalize, "__qualname__", None),
                                         getattr(e.finalize, "jinja_pass_arg", None)),
        sorted((k, repr(v)) for k, v in e.policies.items() if k.startswith("compiler.")),
        # the generator writes the code: Jinja's own or castle's (castle/io/codegen.py)
        (e.code_generator_class.__module__, e.code_generator_class.__qualname__,
         getattr(e.code_generator_class, "VERSION", None)),
    ))
    return hashlib.sha256(shape.encode() + b"\0" + source.encode()).hexdigest()


def module_text(environment: jinja2.Environment, name: str, source: str) -> str:
    """The module of one template: Jinja's own Python code for it, then its key."""
    code = environment.compile(source, name, name, raw=True)
    return f"{code}\n\nCASTLE_KEY = {key(environment, source)!r}\n"


def compile_all(environment: jinja2.Environment, templates: Path, folder: Path) -> list[Path]:
    """Write every template below `templates` as a module into `folder` (a package)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "__init__.py"]
    written[0].write_text('"""castle\'s templates compiled by its build (hatch_build.py)."""\n')
    for path in sorted(templates.rglob("*.j2")):
        name = path.relative_to(templates).as_posix()
        target = folder / f"{module_name(name)}.py"
        if target in written:
            raise ValueError(f"templates {name} and another share the module {target.name}")
        target.write_text(module_text(environment, name, path.read_text("utf-8")))
        written.append(target)
    return written


def precompiled(environment: jinja2.Environment, name: str, source: str) -> dict[str, Any] | None:
    """The namespace of a template's compiled module, when one exists and matches `source`.

    Jinja's code names `environment` at its top level, so the module is run with it set
    (through the import system, which keeps the module's bytecode cached).
    """
    try:
        spec = importlib.util.find_spec(f"{PACKAGE}.{module_name(name)}")
    except ImportError:
        return None
    if spec is None or spec.loader is None or spec.origin is None:
        return None
    # the key is checked before the module runs: one another Jinja made may not even import
    try:
        with open(spec.origin, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 200))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    wanted = key(environment, source)
    if not tail.endswith(f"\nCASTLE_KEY = {wanted!r}\n"):
        return None
    module = importlib.util.module_from_spec(spec)
    module.__dict__["environment"] = environment
    spec.loader.exec_module(module)
    namespace: dict[str, Any] = module.__dict__
    if namespace.get("CASTLE_KEY") != wanted:
        return None  # made from another source, Jinja or environment: compile the source
    return namespace
