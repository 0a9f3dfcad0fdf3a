"""Every hook is documented for plugin authors, and has a typed docstring."""

from __future__ import annotations

import inspect
import re

from ttc import hookspecs

from conftest import ROOT


def _hooks() -> list[str]:
    return [
        name
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, "ttc_spec")
    ]


def test_every_hook_has_a_docs_section() -> None:
    docs = (ROOT / "docs" / "plugins.md").read_text()
    sections = set(re.findall(r"^### (\w+)$", docs, flags=re.M))
    hooks = set(_hooks())
    assert len(hooks) >= 10
    assert hooks - sections == set(), "hooks without a docs/plugins.md section"
    assert sections - hooks == set(), "docs sections for hooks that do not exist"


def test_every_hook_has_a_docstring_and_annotations() -> None:
    for name in _hooks():
        fn = getattr(hookspecs, name)
        assert fn.__doc__ and len(fn.__doc__) > 40, name
        sig = inspect.signature(fn)
        assert all(p.annotation is not inspect.Parameter.empty for p in sig.parameters.values())
