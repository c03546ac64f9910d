"""Jinja's code generator, with each run of template text and `{{ }}` values yielded at once.

Jinja compiles `  {{ a }}: {{ b }}\n` to five `yield`s, one a piece; a big file is then
joined from hundreds of thousands of fragments. Here the pieces of one output node go out
as one `"  %s: %s\n" % (a, b)`: `%s` is `str()` of each value, exactly as Jinja writes
them, so the text is the same, made with one yield and no `str` call a value.
"""

from __future__ import annotations

from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame


class JoinedOutput(CodeGenerator):
    """A CodeGenerator that yields each output node as one formatted string."""

    # in the key of a compiled template (castle/io/compiled.py) and the bytecode cache's
    # file names: code another version of this generator made is never taken for its own
    VERSION = 1

    @staticmethod
    def fits() -> bool:
        """True when this Jinja's generator has the two helpers the override calls (Jinja
        3.0 to 3.1 do; they are not public API)."""
        return all(hasattr(CodeGenerator, name)
                   for name in ("_make_finalize", "_output_child_to_const", "visit_Output"))

    def visit_Output(self, node: nodes.Output, frame: Frame) -> None:
        """One `yield FORMAT % (values,)` for the node; Jinja's own code where it differs
        (inside a buffer, with autoescape or a finalize function)."""
        finalize = self._make_finalize()
        if (frame.buffer is not None or frame.eval_ctx.volatile or frame.eval_ctx.autoescape
                or finalize.src is not None):
            super().visit_Output(node, frame)
            return
        body: list[str | nodes.Expr] = []  # text known now, or a value to compute
        for child in node.nodes:
            try:
                if not (finalize.const or isinstance(child, nodes.TemplateData)):
                    raise nodes.Impossible()
                const: Any = self._output_child_to_const(child, frame, finalize)
            except (nodes.Impossible, Exception):  # as Jinja: computed at run time
                body.append(child)
                continue
            if body and isinstance(body[-1], str):
                body[-1] += str(const)
            else:
                body.append(str(const))
        values = [item for item in body if not isinstance(item, str)]
        if not values or len(body) == 1:
            super().visit_Output(node, frame)
            return
        if frame.require_output_check:
            if self.has_known_extends:
                return
            self.writeline("if parent_template is None:")
            self.indent()
        fmt = "".join(item.replace("%", "%%") if isinstance(item, str) else "%s"
                      for item in body)
        self.writeline(f"yield {fmt!r} % (")
        for value in values:
            self.visit(value, frame)
            self.write(", ")
        self.write(")")
        if frame.require_output_check:
            self.outdent()
