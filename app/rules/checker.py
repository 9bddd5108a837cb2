"""What every part of the rules compiler shares: problems collected with their line, and the
checks of plain values (keys, one value or a list, true/false, phone numbers).

A base class rather than functions, so the compiler and its `when:` conditions
(`conditions.Conditions`) report into one list, in the order the file is read.
"""

from __future__ import annotations

import difflib
import re

from .engine import digits
from .source import Problem, YList, YMap

_NUMBER_CHARS = re.compile(r"^[0-9+\-.() ]+$")


class Checker:
    def __init__(self, path: str):
        self.path = path
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []

    # -- reporting -----------------------------------------------------------------
    def error(self, line: int, message: str, kind: str = "bad value") -> None:
        self.errors.append(Problem(self.path, line, message, kind))

    def warn(self, line: int, message: str) -> None:
        self.warnings.append(Problem(self.path, line, message, "warning"))

    def keys(self, mapping: YMap, allowed: tuple[str, ...], where: str,
             not_yet: frozenset[str] = frozenset()) -> None:
        for key in mapping:
            if key in allowed:
                if key in not_yet:
                    self.error(mapping.key_line(key), f"{key!r} is not available yet", kind="unknown key")
                continue
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            why = f"did you mean {hint[0]!r}?" if hint else f"expected one of: {', '.join(allowed)}"
            self.error(mapping.key_line(key), f"unknown key {key!r} in {where} ({why})", kind="unknown key")

    # -- scalar helpers ------------------------------------------------------------
    def values(self, mapping: YMap, key: str, kinds=(str, int)) -> list[tuple[object, int]]:
        """One value or a list of values, each with its line; [] after an error."""
        value = mapping[key]
        if isinstance(value, YList):
            items = [(v, value.item_line(i)) for i, v in enumerate(value)]
            if not items:
                self.error(mapping.value_line(key), f"{key!r} needs at least one value", kind="missing value")
        else:
            items = [(value, mapping.value_line(key))]
        good = []
        for item, line in items:
            if isinstance(item, bool) or not isinstance(item, kinds) or item == "":
                self.error(line, f"{key!r} takes {_kind_names(kinds)} or a list of them, got {show(item)}")
            else:
                good.append((item, line))
        return good

    def boolean(self, mapping: YMap, key: str) -> bool:
        value = mapping[key]
        if not isinstance(value, bool):
            self.error(mapping.value_line(key), f"{key!r} must be true or false, got {show(value)}")
            return False
        return value

    def numbers(self, mapping: YMap, key: str) -> tuple[list[str], list[str]]:
        """Phone numbers reduced to digits: (exact, prefixes)."""
        exact, prefixes = [], []
        for value, line in self.values(mapping, key):
            text = str(value).strip()
            prefix = text.endswith("*")
            core = text[:-1].rstrip() if prefix else text
            if not core and prefix:
                self.error(line, f"{key!r}: '*' alone matches every number; leave the condition out instead")
            elif not _NUMBER_CHARS.match(core) or not digits(core):
                self.error(line, f"{key!r}: {text!r} is not a phone number (digits, optionally "
                                 "with + spaces dashes dots parentheses, and a trailing * for a prefix)")
            else:
                (prefixes if prefix else exact).append(digits(core))
        return exact, prefixes


def show(value) -> str:
    """A value as a problem quotes it: its repr, or what it is when it is a mapping, a list or nothing."""
    if isinstance(value, YMap) or isinstance(value, dict):
        return "a mapping"
    if isinstance(value, YList) or isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return repr(value)


def _kind_names(kinds) -> str:
    return " or ".join({str: "text", int: "a number", bool: "true/false"}.get(k, k.__name__) for k in kinds)
