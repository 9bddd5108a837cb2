"""What the compiler keeps of each rule besides the compiled `Rule`: its shape (name, line,
which conditions, keywords and texts, whether it stops), for two uses that look at all
the rules at once: the warnings about rules that can never match, and the `RuleSet`'s
index by keyword and by text.
"""

from __future__ import annotations

from .engine import Rule, RuleSet, first_keyword


class Shape:
    """What the shadow analysis, the index (and `answers_whatsapp`) need to know of a rule."""

    __slots__ = ("name", "line", "has_when", "when_keys", "keywords", "texts", "stops", "whatsapp")

    def __init__(self, name, line, when, keywords, texts, stops, whatsapp=False):
        self.name, self.line, self.stops = name, line, stops
        self.has_when = bool(when)  # `when: {}` matches everything, like no `when`
        self.when_keys = frozenset(when) if isinstance(when, dict) else frozenset()
        self.keywords, self.texts = keywords, texts
        self.whatsapp = whatsapp  # it can send text or media to a WhatsApp sender


def shadow_warnings(shapes: list[Shape]) -> list[tuple[int, str]]:
    """(line, warning) for each rule that can never match because an earlier one always stops first."""
    warnings = []
    catch_all = None
    by_keyword: dict[str, Shape] = {}
    by_text: dict[str, Shape] = {}
    for shape in shapes:
        earlier = catch_all
        if earlier is None and shape.keywords:
            if all(k in by_keyword for k in shape.keywords):
                earlier = by_keyword[min(shape.keywords, key=lambda k: by_keyword[k].line)]
        if earlier is None and shape.texts and shape.keywords is None:
            cover = [by_text.get(t) or by_keyword.get(first_keyword(t)) for t in shape.texts]
            if all(cover):
                earlier = min(cover, key=lambda s: s.line)
        if earlier is not None:
            warnings.append((shape.line, f"rule {shape.name!r} can never match: rule {earlier.name!r} "
                                         f"(line {earlier.line}) matches first and stops"))
            continue
        if not shape.stops:
            continue
        if not shape.has_when:
            catch_all = shape
        elif shape.when_keys == {"keyword"} and shape.keywords:
            for k in shape.keywords:
                by_keyword.setdefault(k, shape)
        elif shape.when_keys == {"text"} and shape.texts:
            for t in shape.texts:
                by_text.setdefault(t, shape)
    return warnings


def indexed_ruleset(path, digest, tz, rules: list[Rule], shapes: list[Shape], warnings) -> RuleSet:
    """The `RuleSet`: the rules, and the indexes of those with keywords or whole texts."""
    by_keyword: dict[str, list[int]] = {}
    by_text: dict[str, list[int]] = {}
    general: list[int] = []
    for rule, shape in zip(rules, shapes):
        if shape.keywords:
            for k in shape.keywords:
                by_keyword.setdefault(k, []).append(rule.index)
        elif shape.texts:
            for t in shape.texts:
                by_text.setdefault(t, []).append(rule.index)
        else:
            general.append(rule.index)
    return RuleSet(
        path=path, digest=digest, tz=tz, rules=tuple(rules),
        by_keyword={k: tuple(v) for k, v in by_keyword.items()},
        by_text={k: tuple(v) for k, v in by_text.items()},
        general=tuple(general), warnings=tuple(warnings),
    )
