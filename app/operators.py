"""Operators' names and passwords: what a name may be, and the password's hash.

Pure functions; the store keeps only the hash, and the commands and (later) the sign-in page
call these. Hashes are werkzeug's scrypt (`scrypt:32768:8:1$salt$hash`): slow on purpose, salted,
and checked in constant time by werkzeug.
"""

from __future__ import annotations

import re

from werkzeug.security import check_password_hash, generate_password_hash

#: The shortest password `operators add` accepts.
MIN_PASSWORD = 8
#: The longest name.
MAX_NAME = 64
_NAME = re.compile(r"[A-Za-z0-9._-]{1,%d}" % MAX_NAME)


def name_problem(name: str) -> str | None:
    """Why `name` cannot be an operator's name, or None when it can.

    1 to 64 ASCII letters, digits, `.`, `_` or `-`: a name is typed at sign-in, shown in
    pages and written in logs and records beside what an operator did, so it carries no
    spaces, markup, control characters or look-alike letters from other alphabets, and two
    operators can never have names that only look the same.
    """
    if _NAME.fullmatch(name):
        return None
    return (f"{name!r} is not an operator name: 1 to {MAX_NAME} characters, letters, digits, "
            "'.', '_' or '-' only")


def password_problem(password: str) -> str | None:
    """Why `password` is refused, or None (the text never repeats the password)."""
    if not password:
        return "the password is empty"
    if len(password) < MIN_PASSWORD:
        return f"the password is shorter than {MIN_PASSWORD} characters"
    return None


def hash_password(password: str) -> str:
    """A salted scrypt hash of `password`, as the store keeps it."""
    return generate_password_hash(password, method="scrypt")


def check_password(password_hash: str | None, password: str) -> bool:
    """True when `password` is the one `password_hash` was made from; False for no hash."""
    if not password_hash:
        return False
    return check_password_hash(password_hash, password)
