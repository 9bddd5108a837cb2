"""Read YAML keeping the line of every key and value, so problems can say `path:line`.

Mappings come back as `YMap` (a dict that knows the line of each key and
value), sequences as `YList` (a list that knows each item's line). Scalars
are plain Python values.

The scalar rules are YAML 1.2's, not PyYAML's 1.1 defaults: only
true/false are booleans (so `YES`, `ON` and `NO` stay the keywords users meant),
integers are plain decimals without leading zeros (`0044…` stays a string of
digits) and there are no sexagesimal numbers (`17:00` stays text).

Whatever the text, `parse` returns or raises `RulesError`, never another exception:
only the tags of plain values, lists and mappings are read (`!!binary`, `!!timestamp`,
`!!set`, `!!python/...` and custom tags are problems), and the size of the file, how
deep lists and mappings nest and how far aliases expand are bounded, each checked
before PyYAML builds anything recursively.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml


@dataclass(frozen=True, slots=True)
class Problem:
    """One error or warning about a rules file."""

    path: str
    line: int  # 1-based; 0 when the problem concerns the whole file
    message: str
    #: A few words that say what is wrong without quoting the file (`bad url`, `unknown key`):
    #: what /readyz shows, since a message may quote a value (a URL with its password).
    kind: str = field(default="bad value", compare=False)

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"

    @property
    def where(self) -> str:
        """`path:line`, or the path alone for a problem of the whole file."""
        return f"{self.path}:{self.line}" if self.line else self.path

    @property
    def brief(self) -> str:
        """`path:line: kind`: the problem without any of the file's content."""
        return f"{self.where}: {self.kind}"


class RulesError(Exception):
    """A rules file was rejected; `problems` lists every error found."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class YMap(dict):
    """A mapping that remembers where it and each of its keys and values stand."""

    line: int = 0
    key_lines: dict
    value_lines: dict

    def key_line(self, key) -> int:
        return self.key_lines.get(key, self.line)

    def value_line(self, key) -> int:
        return self.value_lines.get(key, self.key_line(key))


class YList(list):
    """A sequence that remembers the line of each item."""

    line: int = 0
    item_lines: list

    def item_line(self, index: int) -> int:
        try:
            return self.item_lines[index]
        except (AttributeError, IndexError):
            return self.line


_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"
_VALUE = "tag:yaml.org,2002:value"
_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"

# What a rules file may hold, checked before anything is built from it, so that no input
# reaches PyYAML's constructors (or the compiler) in a shape they were not written for.
MAX_CHARS = 4_000_000  # a rules file of thousands of rules is well under 1 MB
MAX_DEPTH = 50  # lists and mappings inside each other; the deepest real rule needs about 10
MAX_VALUES = 1_000_000  # values after expanding every alias (`*name`): bounds "billion laughs"
_SCALAR_TAGS = frozenset({_STR, _INT, _FLOAT, _BOOL, _NULL, _MERGE})

# libyaml's parser when PyYAML was built with it (much faster on big files); the
# resolvers and constructors below are Python either way, so the result is the same.
_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Base):  # type: ignore[misc, valid-type]
    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _INT, _FLOAT, _TIMESTAMP, _VALUE)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream, problems: list[Problem], path: str):
        super().__init__(stream)
        self.problems = problems
        self.path = path


_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(_INT, re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."),
)


def _construct_int(loader: _Loader, node) -> int | str:
    text = loader.construct_scalar(node)
    try:
        return int(text)
    except ValueError:  # more digits than Python converts: keep the text, checks will say why
        return text


def _construct_float(loader: _Loader, node) -> float:
    return float(loader.construct_scalar(node))


def _construct_bool(loader: _Loader, node) -> bool:
    return loader.construct_scalar(node).lower() == "true"  # the text was checked by _check_nodes


def _construct_map(loader: _Loader, node) -> YMap:
    # After flatten_mapping the pairs merged in with `<<:` come first; an explicit key
    # may override a merged one (YAML's merge rule), while two explicit ones clash.
    own = sum(1 for key_node, _ in node.value if key_node.tag != _MERGE)
    loader.flatten_mapping(node)
    merged_count = len(node.value) - own
    merged: set = set()
    out = YMap()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    out.value_lines = {}
    for i, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:
            loader.problems.append(Problem(loader.path, line, "a key must be a plain value", "bad key"))
            continue
        if key in out and i >= merged_count and key not in merged:
            loader.problems.append(Problem(loader.path, line, f"duplicate key {key!r}", "duplicate key"))
            continue
        if i < merged_count:
            merged.add(key)
        else:
            merged.discard(key)
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = line
        out.value_lines[key] = value_node.start_mark.line + 1
    return out


def _construct_list(loader: _Loader, node) -> YList:
    out = YList(loader.construct_object(item, deep=True) for item in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [item.start_mark.line + 1 for item in node.value]
    return out


_Loader.add_constructor(_INT, _construct_int)
_Loader.add_constructor(_FLOAT, _construct_float)
_Loader.add_constructor(_BOOL, _construct_bool)
_Loader.add_constructor(_MERGE, lambda loader, node: loader.construct_scalar(node))  # `<<` as a value: text
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_list)


def parse(text: str, path: str) -> tuple[object, list[Problem]]:
    """The document in `text` and the structural problems found while reading it.

    A YAML syntax error is raised as `RulesError` at once: nothing after it can
    be trusted.
    """
    problems: list[Problem] = []
    if len(text) > MAX_CHARS:
        raise RulesError([Problem(path, 1, f"the file is larger than {MAX_CHARS:,} characters", "file too large")])
    loader = None
    try:
        deep = _too_deep(text, path)  # before composing: PyYAML builds nested values recursively
        if deep is not None:
            raise RulesError([deep])
        loader = _Loader(text, problems, path)  # the reader checks characters here already
        node = loader.get_single_node()
        data = None
        if node is not None:
            wrong = _check_nodes(node, path)
            if wrong:
                raise RulesError(wrong)
            data = loader.construct_document(node)
    except RulesError:
        raise
    except Exception as exc:  # noqa: BLE001 - each becomes one problem, see _reading_problem
        raise RulesError([_reading_problem(exc, text, path)]) from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, problems


_SURROGATE = re.compile("[\ud800-\udfff]")


def _reading_problem(exc: Exception, text: str, path: str) -> Problem:
    """What went wrong reading `text`, from the exception PyYAML (or Python) raised."""
    if isinstance(exc, yaml.reader.ReaderError):
        line = text[: exc.position].count("\n") + 1
        return Problem(path, line, f"character {exc.character!r} is not allowed in YAML "
                                   "(control characters must be escaped in double quotes)", "bad YAML")
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        what = exc.problem or exc.context or "not valid YAML"
        return Problem(path, line, f"YAML syntax error: {what}", "bad YAML")
    if isinstance(exc, yaml.YAMLError):  # e.g. a document that is not text
        return Problem(path, 1, f"YAML error: {exc}", "bad YAML")
    if isinstance(exc, UnicodeEncodeError):  # a lone surrogate: only text not read from a file can hold one
        found = _SURROGATE.search(text)
        where = found.start() if found else 0
        return Problem(path, text[:where].count("\n") + 1,
                       f"character {text[where]!r} is not allowed in YAML", "bad YAML")
    if isinstance(exc, (RecursionError, MemoryError)):
        return Problem(path, 1, "the file is nested too deeply or too large to read", "file too large")
    # The checks before composing should leave nothing else to fail.
    return Problem(path, 1, f"cannot read the file ({type(exc).__name__}: {exc})", "bad YAML")


class _Stop(Exception):
    """Ends the walk in `_check_nodes`: what follows cannot be checked sensibly."""


def _too_deep(text: str, path: str) -> Problem | None:
    """A problem at the first list or mapping nested more than MAX_DEPTH deep, from the
    parser's events (built without recursion), so that the recursive composer never sees it."""
    depth = 0
    for event in yaml.parse(text, Loader=_Base):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                return Problem(path, event.start_mark.line + 1,
                               f"lists and mappings are nested more than {MAX_DEPTH} deep", "nested too deep")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return None


def _tag_name(tag: str) -> str:
    name = tag.replace("tag:yaml.org,2002:", "!!")
    return name if len(name) <= 60 else name[:57] + "..."


def _quoted(value: str) -> str:
    return repr(value if len(value) <= 30 else value[:27] + "...")


def _check_nodes(root, path: str) -> list[Problem]:
    """Problems with the composed document that PyYAML's constructors would trip over:
    tags other than plain values, lists and mappings (and those that do not fit their
    value), `!!bool`/`!!float` on text that is not one, aliases that contain
    themselves, and aliases that expand past MAX_DEPTH or MAX_VALUES."""
    walk = _NodeWalk(path)
    try:
        walk.visit(root, 1, root.start_mark.line + 1)
    except _Stop:
        pass
    return walk.problems


def _tag_problem(node, path: str) -> Problem | None:
    """The problem with `node`'s tag, if any: one PyYAML would not build, one that does not fit
    the kind of node, or `!!bool`/`!!float` on text that is not one."""
    tag, line = node.tag, node.start_mark.line + 1
    if isinstance(node, yaml.ScalarNode):
        kind, fits = "plain value", tag in _SCALAR_TAGS
    elif isinstance(node, yaml.SequenceNode):
        kind, fits = "list", tag == _SEQ
    else:
        kind, fits = "mapping", tag == _MAP
    if not fits:
        if tag in _SCALAR_TAGS or tag in (_SEQ, _MAP):
            return Problem(path, line, f"the YAML tag {_tag_name(tag)} does not fit a {kind}", "bad YAML")
        return Problem(path, line, f"unsupported YAML tag {_tag_name(tag)}: a rules file holds "
                                   "only text, numbers, true/false, lists and mappings", "bad YAML")
    if tag == _BOOL and node.value.lower() not in ("true", "false"):
        return Problem(path, line, f"!!bool takes true or false, got {_quoted(node.value)}")
    if tag == _FLOAT:
        try:
            float(node.value)
        except ValueError:
            return Problem(path, line, f"!!float takes a number, got {_quoted(node.value)}")
    return None


def _children(node) -> list[tuple[object, int]]:
    """The nodes inside `node`, each with the line its value stands on: list items at
    their list's line, mapping keys and values at their key's."""
    own = node.start_mark.line + 1
    if isinstance(node, yaml.SequenceNode):
        return [(item, own) for item in node.value]
    if isinstance(node, yaml.MappingNode):
        return [(part, k.start_mark.line + 1) for k, v in node.value for part in (k, v)]
    return []


class _NodeWalk:
    """One depth-first walk over a composed document, for `_check_nodes`: the problems
    found so far, and what it knows of the nodes seen (an alias is the anchored node
    itself, so a node can be met again)."""

    def __init__(self, path: str):
        self.path = path
        self.problems: list[Problem] = []
        self.done: dict[int, tuple[int, int]] = {}  # id(node) -> (height, values) once walked
        self.on_path: set[int] = set()

    def stop(self, line: int, message: str) -> _Stop:
        self.problems.append(Problem(self.path, line, message, "bad YAML"))
        return _Stop()

    def visit(self, node, depth: int, line: int) -> tuple[int, int]:
        """The height of `node` and the number of values in it, aliases expanded.

        `line` is where the value stands: for an alias, the line of the alias (a node
        reached through an alias is the anchored node itself, marked where it was defined).
        """
        key = id(node)
        if key in self.on_path:
            raise self.stop(line, "this alias refers to a list or mapping that contains it")
        if key in self.done:
            height, values = self.done[key]
            if depth + height - 1 > MAX_DEPTH:
                raise self.stop(line, f"this alias nests lists and mappings more than {MAX_DEPTH} deep")
            return height, values
        if depth > MAX_DEPTH:
            raise self.stop(line, f"lists and mappings are nested more than {MAX_DEPTH} deep")
        problem = _tag_problem(node, self.path)
        if problem is not None:
            self.problems.append(problem)
        height, values = 1, 1
        self.on_path.add(key)
        for child, child_line in _children(node):
            child_height, child_values = self.visit(child, depth + 1, child_line)
            height = max(height, child_height + 1)
            values += child_values
            if values > MAX_VALUES:
                raise self.stop(child_line, f"the aliases (*name) here expand to more than {MAX_VALUES:,} values")
        self.on_path.discard(key)
        self.done[key] = height, values
        return height, values
