"""Who called: the ``vsmd`` command, ``vsmd.fit``, or the Python API. A message that says which option to change
names it as the caller writes it, through :func:`option`:

- the command line (the default): ``--data.init_args.path my.csv``, ``--ckpt_path``;
- ``vsmd.fit``: ``data={"path": 'my.csv'}``, ``ckpt_path=``;
- the Python API (``vsmd.load``, ``vsmd.evaluate``, ``Model``'s methods): the DataModule's argument
  ``path='my.csv'``, ``vsmd.load(path)``, ``vsmd.evaluate(model, sample_steps=50)``.

The entry points of the API set the caller with :func:`called_from` for the duration of the call.
"""

from __future__ import annotations

import ast
import contextlib
import functools
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TypeVar

CALLERS = ("cli", "fit", "python")
_CALLER: ContextVar[str] = ContextVar("vsmd_caller", default="cli")
F = TypeVar("F", bound=Callable)


def caller() -> str:
    """"cli", "fit" or "python"."""
    return _CALLER.get()


@contextlib.contextmanager
def called_from(who: str) -> Iterator[None]:
    """Messages raised inside name options as ``who`` ("cli", "fit" or "python") writes them."""
    if who not in CALLERS:
        raise ValueError(f"caller {who!r}: one of {', '.join(CALLERS)}")
    token = _CALLER.set(who)
    try:
        yield
    finally:
        _CALLER.reset(token)


def python_api(func: F) -> F:
    """An entry point of the Python API: its errors name Python arguments (unless ``vsmd.fit`` called it)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if caller() == "fit":
            return func(*args, **kwargs)
        with called_from("python"):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _literal(text: str) -> str:
    """``text`` as Python source: as it is when it is a literal already (``';'``, ``3``), else quoted (a path)."""
    try:
        ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return repr(text)
    return text


def option(name: str, value: object = None, training: bool = False) -> str:
    """How the caller gives option ``name``, with ``value`` if given: its text as the command line shows it (a path,
    ``';'``), quoted for Python where it is no Python literal.

    ``name`` is the option's place in a config: ``ckpt_path``, ``data.<arg>``, ``model.<arg>`` or ``trainer.<arg>``
    (dots for deeper ones: ``trainer.logger.init_args.save_dir``). Through the API a model option is an evaluation
    setting of ``vsmd.evaluate``, or with ``training`` one that only a new fit changes (``vsmd.fit``), as the Trainer's
    options are (the run folder aside: ``save_dir=`` of ``vsmd.evaluate``).
    """
    section, _, arg = name.partition(".")
    value = None if value is None else str(value)
    who = caller()
    if who == "cli":
        flag = f"--{section}.init_args.{arg}" if section in ("data", "model") else f"--{name}"
        return flag if value is None else f"{flag} {value}"
    shown = "..." if value is None else _literal(value)
    if not arg:  # a top-level option: ckpt_path
        if who == "python" and name == "ckpt_path":
            return "the path of vsmd.load(path)" if value is None else f"vsmd.load({shown})"
        return f"{name}={shown}"
    if who == "fit":  # the keyword of the section, nested as the config nests it
        keys = arg.split(".")
        return f"{section}=" + "".join(f'{{"{k}": ' for k in keys) + shown + "}" * len(keys)
    leaf = arg.rsplit(".", 1)[-1]
    if section == "data":
        return f"the DataModule's argument {leaf}={shown}"
    if section == "model" and not training:
        return f"vsmd.evaluate(model, {leaf}={shown})"
    if leaf == "save_dir":
        return f"save_dir={shown}"
    with called_from("fit"):
        return f"vsmd.fit(..., {option(name, value)})"
