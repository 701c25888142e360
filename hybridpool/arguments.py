"""Constructor arguments: the range checks constructors and the config check share, and the keywords a class accepts.

Each range is written once, by the class that owns the argument: a construction-free ``check_args(**kwargs)``
(a static- or classmethod) returns the problems of the arguments it is given (:class:`ArgumentError` objects); its
constructor raises the first one (:func:`raise_first`), and :func:`hybridpool.run.config.validate_config` reports
them all, under each argument's config key path, before anything is built.

:func:`accepted_arguments` lists the keywords a class takes, following ``**kwargs`` into the base constructor for
the classes that say they forward them (``KWARGS_TO_BASE = True``), less the base arguments such a class sets
itself (``FIXED_ARGS``).

Standard library only.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = ["ArgumentError", "Rule", "accepted_arguments", "check_rules", "number", "one_of", "raise_first"]

#: a range check of one argument: ``rule(arg, value) -> ArgumentError | None``
Rule = Callable[[str, Any], "ArgumentError | None"]


class ArgumentError(ValueError):
    """One constructor argument out of range: ``"<arg> must be <accepted>, got <value>"``.

    Attributes: ``arg`` (the argument's name), ``value``, ``accepted`` (what is accepted, as text).
    """

    def __init__(self, arg: str, value: Any, accepted: str):
        self.arg = arg
        self.value = value
        self.accepted = accepted
        super().__init__(f"{arg} must be {accepted}, got {value!r}")

    def at(self, path: str) -> str:
        """The problem as the config check reports it: ``"<path>: must be <accepted>, got <value>"``."""
        return f"{path}: must be {self.accepted}, got {self.value!r}"


def _bound(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return "a number"


def number(
    arg: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> ArgumentError | None:
    """The problem with a numeric argument (``None`` if there is none): not a real number (``bool`` is not one;
    ``None`` only with ``optional``) or outside ``low``/``high`` (inclusive unless ``low_open``/``high_open``)."""
    if value is None and optional:
        return None
    rule = _bound(low, high, low_open, high_open)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return ArgumentError(arg, value, rule if rule == "a number" else f"a number {rule}")
    v = float(value)
    if (low is not None and (v <= low if low_open else v < low)) or (
        high is not None and (v >= high if high_open else v > high)
    ):
        return ArgumentError(arg, value, rule)
    return None


def one_of(arg: str, value: Any, choices: Sequence[Any]) -> ArgumentError | None:
    """The problem with an argument that must be one of ``choices`` (``None`` if there is none)."""
    if value in choices:
        return None
    return ArgumentError(arg, value, "one of " + ", ".join(repr(c) for c in choices))


def check_rules(rules: Mapping[str, Rule], kwargs: Mapping[str, Any]) -> list[ArgumentError]:
    """The problems of the arguments in ``kwargs`` that have a rule (the others are not looked at)."""
    found = (rule(arg, kwargs[arg]) for arg, rule in rules.items() if arg in kwargs)
    return [p for p in found if p is not None]


def raise_first(problems: Iterable[ArgumentError | None]) -> None:
    """Raise the first problem (constructors check their arguments with their own ``check_args``)."""
    for problem in problems:
        if problem is not None:
            raise problem


def _named(params: Iterable[inspect.Parameter]) -> list[inspect.Parameter]:
    return [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def accepted_arguments(obj: Any) -> tuple[dict[str, inspect.Parameter], bool]:
    """The keyword arguments ``obj(...)`` accepts (name -> parameter, with the default that applies), and whether
    it takes any other keyword too (an open ``**kwargs``; ``True`` also when the signature cannot be read).

    A class with ``KWARGS_TO_BASE = True`` passes its ``**kwargs`` on to the constructor of its base: the
    ``__init__`` signatures along its MRO are joined (a subclass's parameter, and so its default, wins) until one
    without ``**kwargs``; that last one's arguments named in the class's ``FIXED_ARGS`` (base arguments it sets
    itself) are not accepted.
    """
    if not (isinstance(obj, type) and getattr(obj, "KWARGS_TO_BASE", False)):
        try:
            sig = inspect.signature(obj)
        except (TypeError, ValueError):
            return {}, True
        var_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        return {p.name: p for p in _named(sig.parameters.values())}, var_kw
    fixed = getattr(obj, "FIXED_ARGS", {})
    accepted: dict[str, inspect.Parameter] = {}
    for klass in obj.__mro__:
        init = vars(klass).get("__init__")
        if init is None:
            continue
        try:
            params = list(inspect.signature(init).parameters.values())[1:]  # without self
        except (TypeError, ValueError):
            return accepted, True
        last = not any(p.kind is p.VAR_KEYWORD for p in params)
        for p in _named(params):
            if p.name not in accepted and not (last and p.name in fixed):
                accepted[p.name] = p
        if last:
            return accepted, False
    return accepted, True
