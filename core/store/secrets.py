"""Keeping secrets out of everything ttc stores or prints.

A password in a database URL (`store.url`, a backend's `base_url`) or a value under a
secret-looking key (`api_key`, `password`, ...) is replaced by `***` before a config is
stored or handed to hooks, and error text is scrubbed of URL passwords before it is
stored or printed. URLs are rendered by SQLAlchemy's own URL type, which knows where the
password is (percent-encoded or not).
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

SECRET_KEYS = frozenset({"password", "passwd", "secret", "api_key", "apikey", "token", "auth"})
"""Config keys whose values are secrets whatever they look like."""

# scheme://user:password@host -> the password part (up to the last @ before the host)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"]*:)(?P<pw>[^\s'\"]*)@")


def mask_url(url: str) -> str:
    """`url` with its password replaced by `***` (unchanged when it has none)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return scrub(url)
    if parsed.password is None:
        return scrub(url)
    return parsed.render_as_string(hide_password=True)


def scrub(text: str) -> str:
    """`text` with the password of every `scheme://user:password@...` in it masked."""
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", text)


def mask_config(value: Any, key: str = "") -> Any:
    """A copy of plain config data with secrets masked (see the module docstring)."""
    if isinstance(value, dict):
        return {k: mask_config(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_config(v, key) for v in value]
    if isinstance(value, str):
        if key.lower() in SECRET_KEYS and value:
            return MASK
        if "://" in value:
            return mask_url(value)
    return value
