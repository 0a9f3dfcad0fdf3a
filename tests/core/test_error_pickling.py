"""Every ttc error survives pickling: a Ray actor's error reaches the driver as the same
error (type, message, hint, fields), whatever its constructor takes."""

from __future__ import annotations

import inspect
import pickle
import typing

import pytest

from ttc import errors

CLASSES = sorted(
    (c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.TtcError)),
    key=lambda c: c.__name__,
)


def _placeholder(name: str, annotation: object) -> object:
    text = str(annotation)
    if "list" in text:
        return [f"{name}-a", f"{name}-b"]
    if "float" in text:
        return 2.5
    if "int" in text:
        return 3
    return f"{name}-value"


def _instance(cls: type[errors.TtcError]) -> errors.TtcError:
    hints = typing.get_type_hints(cls.__init__)
    kwargs, args = {}, []
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.default is not inspect.Parameter.empty and p.name != "hint":
            continue
        value = "a hint" if p.name == "hint" else _placeholder(p.name, hints.get(p.name))
        if p.kind is inspect.Parameter.KEYWORD_ONLY:
            kwargs[p.name] = value
        else:
            args.append(value)
    return cls(*args, **kwargs)


def test_every_error_class_is_covered() -> None:
    assert len(CLASSES) > 15 and errors.ServerUnreachable in CLASSES


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_an_error_comes_back_from_pickle_as_it_went(cls: type[errors.TtcError]) -> None:
    exc = _instance(cls)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls
    assert str(back) == str(exc) and back.message == exc.message and back.hint == exc.hint
    assert vars(back) == vars(exc)
    assert back.exit_code == exc.exit_code
