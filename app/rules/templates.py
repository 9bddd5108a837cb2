"""Reply templates: Jinja2 in a sandbox, checked and compiled once at load.

A template that uses no Jinja syntax at all is kept as a constant string and
never goes through Jinja at run time. Unknown names are load-time errors, and
so is `match.NAME` where the rule's regex has no group NAME.

Dates and times: `{{ now }}` prints the current local time (the rules'
timezone) to the minute, as `2026-11-23 10:00`. For any other form, the
`strftime` filter takes one format in quotes, with Python's `strftime` codes:

    reply: "Received {{ now | strftime('%A %H:%M') }}."        # Received Monday 10:00.
    reply: "Today is {{ now | strftime('%d %B %Y') }}."        # Today is 23 November 2026.

A format that is not text in quotes, a format that prints nothing (`%5000Y`),
or `strftime` on a quoted value or a name other than `now`, is an error when
the file is loaded; on anything else that is not a date or time
(`match.when`), an error when the reply renders.

The format is always the template's own text, never the sender's (a text of
"%c" repeated would make a reply a dozen times its size): the filter is the
only way to format a date. Dates have no `strftime` method in the sandbox
(`now.strftime(text)`), `map` cannot call the filter (`map('strftime', text)`)
or a filter the message names, and `str.format` formats no date with a spec
(`'{0:{1}}'.format(now, text)`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from functools import update_wrapper
from types import BuiltinMethodType, MethodType

from jinja2 import StrictUndefined, TemplateError, TemplateRuntimeError, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter
from markupsafe import Markup

#: Names a template may use: the sender's `from`, your number `to`, the message's `text`,
#: `type` and `uuid`, `media` (list of URLs), `match` (the regex's named groups), `now`
#: (the local time in the rules' timezone; printed as NOW_FORMAT, or formatted with
#: `strftime`) and `rule` (the rule's name).
NAMES = ("from", "to", "text", "type", "uuid", "media", "match", "now", "rule")

#: How `{{ now }}` prints on its own: local date and time to the minute, `2026-11-23 10:00`.
NOW_FORMAT = "%Y-%m-%d %H:%M"
#: A sample moment to try a `strftime` format on at load, so a bad one is found there.
_SAMPLE = datetime(2026, 11, 23, 10, 0)


def _strftime(value, fmt) -> str:
    """`{{ now | strftime("%A %H:%M") }}`: a date or time in the given format."""
    if not isinstance(fmt, str):
        raise TemplateRuntimeError(f"strftime takes a format in quotes, got {type(fmt).__name__}")
    if not isinstance(value, (date, time)):
        raise TemplateRuntimeError(f"strftime formats now (a date and time), not {type(value).__name__}")
    return value.strftime(fmt)


def _finalize(value):
    """What `{{ ... }}` prints: a date and time, or a time, to the minute; the rest as is."""
    if type(value) is datetime:
        return value.strftime(NOW_FORMAT)
    if type(value) is time:
        return value.strftime("%H:%M")
    return value


_DATE_FORMAT_USAGE = 'format dates with now | strftime("%A %H:%M"), the format in quotes'


class _DateSpecRefused:
    """`str.format` in the sandbox: a date or time takes no format spec there (the spec is
    a strftime format, and it may come from the message: `'{0:{1}}'.format(now, text)`)."""

    def format_field(self, value, format_spec):
        if format_spec and isinstance(value, (date, time)):
            raise SecurityError(f"str.format does not format dates; {_DATE_FORMAT_USAGE}")
        return super().format_field(value, format_spec)


class _Formatter(_DateSpecRefused, SandboxedFormatter):
    pass


class _EscapeFormatter(_DateSpecRefused, SandboxedEscapeFormatter):
    pass


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, in which a date's format can only be the template's own
    text in quotes, given to the `strftime` filter."""

    def is_safe_attribute(self, obj, attr: str, value) -> bool:
        if attr == "strftime" and isinstance(obj, (date, time)):
            return False  # now.strftime(text) would take the sender's text as the format
        return super().is_safe_attribute(obj, attr, value)

    def wrap_str_format(self, value):
        """`str.format` and `str.format_map` as Jinja's sandbox runs them, with a formatter
        that refuses a spec on a date."""
        if (not isinstance(value, (MethodType, BuiltinMethodType)) or value.__name__ not in ("format", "format_map")
                or not isinstance(value.__self__, str)):
            return None
        fmt = value.__self__
        # A Markup text (`|safe`) escapes what it formats, as in Jinja's own sandbox.
        formatter = _EscapeFormatter(self, escape=fmt.escape) if isinstance(fmt, Markup) else _Formatter(self)
        by_map = value.__name__ == "format_map"

        def wrapper(*args, **kwargs):
            if by_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                args, kwargs = (), args[0]
            return type(fmt)(formatter.vformat(fmt, args, kwargs))

        return update_wrapper(wrapper, value)


_ENV = _Sandbox(
    undefined=StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
    finalize=_finalize,
    # Templates come from the operator's own file; the sandbox keeps a typo or a
    # copied snippet from reaching Python internals, and the sender's text is data.
)
_ENV.filters["strftime"] = _strftime


#: The `groups` of a rule whose regex is wrong (that error is reported already): the `match.*`
#: names of its templates are not checked, so the one mistake is not reported twice.
UNKNOWN_GROUPS: frozenset[str] = frozenset({"(a regex with an error)"})


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


def _check_strftime(ast: nodes.Template) -> None:
    """Each `strftime` takes one format in quotes that works and prints something, and
    formats `now` (or an expression whose value only the message tells: that is checked
    when it renders). It is used as a filter only: not as a method (`now.strftime(...)`,
    which the sandbox refuses too), nor through `map`, nor may `map` call a filter whose
    name is not in quotes."""
    usage = 'use it as now | strftime("%A %H:%M")'
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        name = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
        if name == "strftime" and not (isinstance(node.node, nodes.Name) and node.node.name == "match"):
            raise TemplateProblem(f"strftime is a filter, not a method; {usage}")
    for node in ast.find_all(nodes.Filter):
        if node.name == "map" and node.args:
            called = node.args[0]
            if not (isinstance(called, nodes.Const) and isinstance(called.value, str)):
                raise TemplateProblem("map takes the name of a filter in quotes, e.g. map('upper')")
            if called.value == "strftime":
                raise TemplateProblem(f"strftime cannot be used through map; {usage}")
        if node.name == "attr" and node.args and getattr(node.args[0], "value", None) == "strftime":
            raise TemplateProblem(f"strftime is a filter, not a method; {usage}")
        if node.name != "strftime":
            continue
        if len(node.args) != 1 or node.kwargs or node.dyn_args or node.dyn_kwargs:
            raise TemplateProblem(f"strftime takes one format in quotes; {usage}")
        fmt = node.args[0]
        if not (isinstance(fmt, nodes.Const) and isinstance(fmt.value, str)):
            raise TemplateProblem(f"strftime's format must be text in quotes; {usage}")
        try:
            sample = _SAMPLE.strftime(fmt.value)
        except (ValueError, UnicodeError) as exc:
            raise TemplateProblem(f"strftime format {fmt.value!r} does not work: {exc}") from None
        if not sample:  # an empty format, or a field too wide to print (`%5000Y`)
            raise TemplateProblem(f"strftime format {fmt.value!r} prints nothing; {usage}")
        target = node.node  # None in a {% filter strftime(...) %} block, which hands it text
        if target is None:
            raise TemplateProblem(f"strftime formats now (a date and time), not a block of text; {usage}")
        if isinstance(target, nodes.Const) or (isinstance(target, nodes.Name) and target.name != "now"):
            what = repr(target.value) if isinstance(target, nodes.Const) else target.name
            raise TemplateProblem(f"strftime formats now (a date and time), not {what}; {usage}")


def compile_template(source: str, line: int, groups: frozenset[str] | None,
                     cache: dict[str, object] | None = None) -> Template:
    """Check and compile one template. `groups`: the rule's regex groups (None: no regex;
    `UNKNOWN_GROUPS`: a regex with an error).

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
    _check_strftime(ast)
    for attr in sorted(_match_attrs(ast)) if groups is not UNKNOWN_GROUPS else ():
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
