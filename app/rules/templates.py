"""Reply templates: Jinja2 in a sandbox, checked and compiled once at load.

A template that uses no Jinja syntax at all is kept as a constant string and
never goes through Jinja at run time. Unknown names are load-time errors, and
so is `match.NAME` where the rule's regex has no group NAME.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

#: Names a template may use (SPEC §4).
NAMES = ("from", "to", "text", "type", "uuid", "media", "match", "now", "rule")

_ENV = ImmutableSandboxedEnvironment(
    undefined=StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
    # Templates come from the operator's own file; the sandbox keeps a typo or a
    # copied snippet from reaching Python internals, and the sender's text is data.
)


class TemplateProblem(ValueError):
    """A template cannot be used; the message says why (one line)."""


@dataclass(frozen=True, slots=True)
class Template:
    source: str
    line: int
    constant: str | None  # the text itself when the template has no Jinja syntax
    _compiled: object = None

    def render(self, context: Mapping[str, object]) -> str:
        if self.constant is not None:
            return self.constant
        return self._compiled.render(context)  # type: ignore[union-attr]


def _has_syntax(source: str) -> bool:
    return "{{" in source or "{%" in source or "{#" in source


def _match_attrs(ast: nodes.Template) -> set[str]:
    used = set()
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        target = node.node
        if isinstance(target, nodes.Name) and target.name == "match":
            if isinstance(node, nodes.Getattr):
                used.add(node.attr)
            elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                used.add(node.arg.value)
    return used


def compile_template(source: str, line: int, groups: frozenset[str] | None,
                     cache: dict[str, object] | None = None) -> Template:
    """Check and compile one template. `groups`: the rule's regex groups (None: no regex).

    `cache` (source -> compiled) lets one load compile a repeated text once.
    """
    if not _has_syntax(source):
        return Template(source, line, source)
    try:
        ast = _ENV.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"template syntax error: {exc.message}") from None
    except (TemplateError, RecursionError, MemoryError) as exc:
        raise TemplateProblem(f"template error: {exc}") from None
    try:  # this runs Jinja's code generator, which also finds unknown filters and tests
        unknown = sorted(meta.find_undeclared_variables(ast) - set(NAMES))
    except (TemplateError, RecursionError, MemoryError) as exc:
        raise TemplateProblem(f"template error: {getattr(exc, 'message', None) or exc}") from None
    if unknown:
        raise TemplateProblem(
            f"unknown name {', '.join(repr(n) for n in unknown)} in template "
            f"(known: {', '.join(NAMES)})"
        )
    for attr in sorted(_match_attrs(ast)):
        if groups is None:
            raise TemplateProblem(f"template uses match.{attr} but the rule has no regex")
        if attr not in groups:
            known = ", ".join(sorted(groups)) or "none"
            raise TemplateProblem(f"template uses match.{attr} but the regex has no group {attr!r} (groups: {known})")
    compiled = cache.get(source) if cache is not None else None
    if compiled is None:
        try:  # unknown filters and tests are found here, when the template is compiled
            compiled = _ENV.from_string(ast)
        except (TemplateError, RecursionError, MemoryError) as exc:
            raise TemplateProblem(f"template error: {getattr(exc, 'message', None) or exc}") from None
        if cache is not None:
            cache[source] = compiled
    return Template(source, line, None, compiled)
