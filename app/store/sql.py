"""Statements built once from the schema's Core constructs, compiled once per dialect.

The message path runs a handful of statements per message, thousands of times a
second: SQLAlchemy compiles each one here, once, to its dialect's SQL text and the
order of its parameters, with the type of each parameter's bind processor (what
SQLAlchemy itself stores: SQLite's text datetimes, JSON as text, ...). Executing one
is then one `execute` on the driver cursor of the store's own SQLAlchemy connection
(`Database._cursor`), inside a transaction SQLAlchemy began: the same connections,
transactions and error handling as every Core statement of the store, without compiling
again and without SQLAlchemy's result objects (tens of microseconds a statement).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect


class Statement:
    """One Core statement compiled for one dialect: `.sql` and `.params(values)`."""

    __slots__ = ("sql", "positional", "_names", "_get", "_defaults", "_process")

    def __init__(self, construct: sa.Executable, dialect: Dialect):
        compiled = construct.compile(dialect=dialect)
        self.sql = str(compiled)
        self.positional = bool(compiled.positional)
        names = tuple(compiled.positiontup if self.positional
                      else (name for name in compiled.binds if f"%({name})s" in self.sql))
        self._names = names
        getter = operator.itemgetter(*names) if names else (lambda _values: ())
        self._get = getter if len(names) != 1 else (lambda values: (getter(values),))
        # A bind given a value where it was built (a literal) keeps it; the rest are named.
        self._defaults = {name: compiled.binds[name].value for name in names
                          if compiled.binds[name].value is not None}
        processors = ((i, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
                      for i, name in enumerate(names))
        self._process = tuple((i, process) for i, process in processors if process is not None)

    def params(self, values: Mapping[str, Any]) -> tuple | dict:
        """The driver's parameters for `values` (by bind name), processed as SQLAlchemy would."""
        if self._defaults:
            values = {**self._defaults, **values}
        out = self._get(values)
        if self._process:
            out = list(out)
            for i, process in self._process:
                if out[i] is not None:
                    out[i] = process(out[i])
        if self.positional:
            return tuple(out)
        return dict(zip(self._names, out))

    def run(self, cursor, values: Mapping[str, Any]):
        """Execute on a driver cursor (see Database._cursor); the cursor holds the rows."""
        cursor.execute(self.sql, self.params(values))
        return cursor




class Shapes:
    """Statements that differ by a shape (how many rows, which parts): built and compiled at
    the first use of each shape, then kept. `build(*shape)` returns the Core construct."""

    def __init__(self, build: Callable[..., sa.Executable], dialect: Dialect):
        self._build = build
        self._dialect = dialect
        self._made: dict[tuple, Statement] = {}

    def __call__(self, *shape) -> Statement:
        statement = self._made.get(shape)
        if statement is None:
            statement = self._made[shape] = Statement(self._build(*shape), self._dialect)
        return statement
