"""Read YAML keeping the line of every key and value, so problems can say `path:line`.

Mappings come back as `YMap` (a dict that knows the line of each key and
value), sequences as `YList` (a list that knows each item's line). Scalars
are plain Python values.

The scalar rules are YAML 1.2's, not PyYAML's 1.1 defaults: only
true/false are booleans (so `YES`, `ON` and `NO` stay the keywords users meant),
integers are plain decimals without leading zeros (`0044…` stays a string of
digits) and there are no sexagesimal numbers (`17:00` stays text).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml


@dataclass(frozen=True, slots=True)
class Problem:
    """One error or warning about a rules file."""

    path: str
    line: int  # 1-based; 0 when the problem concerns the whole file
    message: str

    def __str__(self) -> str:
        if self.line:
            return f"{self.path}:{self.line}: {self.message}"
        return f"{self.path}: {self.message}"


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

# libyaml's parser when PyYAML was built with it (much faster on big files); the
# resolvers and constructors below are Python either way, so the result is the same.
_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Base):  # type: ignore[misc, valid-type]
    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _INT, _FLOAT, _TIMESTAMP)]
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
            loader.problems.append(Problem(loader.path, line, "a key must be a plain value"))
            continue
        if key in out and i >= merged_count and key not in merged:
            loader.problems.append(Problem(loader.path, line, f"duplicate key {key!r}"))
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
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_list)


def parse(text: str, path: str) -> tuple[object, list[Problem]]:
    """The document in `text` and the structural problems found while reading it.

    A YAML syntax error is raised as `RulesError` at once: nothing after it can
    be trusted.
    """
    problems: list[Problem] = []
    loader = None
    try:
        loader = _Loader(text, problems, path)  # the reader checks characters here already
        data = loader.get_single_data()
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        raise RulesError([Problem(path, line, f"character {exc.character!r} is not allowed in YAML "
                                              "(control characters must be escaped in double quotes)")]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        what = exc.problem or exc.context or "not valid YAML"
        raise RulesError([Problem(path, line, f"YAML syntax error: {what}")]) from None
    except yaml.YAMLError as exc:  # e.g. a document that is not text
        raise RulesError([Problem(path, 0, f"YAML error: {exc}")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, problems
