"""Config validation shared by every component: one schema mechanism for the whole project.

A component is configured by a mapping ``{"_target_": "arch.blocks.gla.GLA", **kwargs}`` (blocks,
data modules) or by a dataclass schema (the model, the optimiser, the schedule). Both are checked
here *before* anything is built, so a typo fails fast with one paragraph that names the key, the
value and what would have been valid, instead of being silently dropped or failing deep inside
``__init__``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

ALLOWED_TARGET_PREFIXES = ("arch.", "data.", "training.", "lightning.", "torch.")


class ConfigError(ValueError):
    """A configuration value is unknown, mistyped or missing; the message says how to fix it."""


def _suggest(key: str, valid: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_type(value: Any, tp: Any) -> bool:
    """True when ``value`` (a plain Python value from a composed config) fits annotation ``tp``.

    Unknown or complex annotations are accepted: the check exists to catch typos such as a string
    where an int belongs, not to re-implement a type system.
    """
    if tp is Any or tp is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(check_type(value, arg) for arg in typing.get_args(tp))
    if origin is Literal:
        return value in typing.get_args(tp)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(args) == len(value) and all(check_type(v, a) for v, a in zip(value, args))
        return not args or all(check_type(v, args[0]) for v in value)
    if origin in (dict, Mapping) or tp is dict:
        return isinstance(value, Mapping)
    return True


def _describe_type(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return _type_name(tp)


def check_kwargs(where: str, kwargs: Mapping[str, Any], fields: Mapping[str, Any], owner: str) -> None:
    """Raise ConfigError if ``kwargs`` has a key not in ``fields`` or a value of the wrong type.

    ``fields`` maps each accepted name to its annotation; ``where`` is the config path shown to the
    user (``model.blocks.attention``); ``owner`` names the class being configured.
    """
    for key, value in kwargs.items():
        if key not in fields:
            valid = ", ".join(sorted(fields)) or "(none)"
            raise ConfigError(
                f"Unknown config key '{where}.{key}' (value {value!r}) for {owner}.{_suggest(key, fields)} "
                f"Valid keys: {valid}. Remove it or fix its spelling on the command line or in the YAML file."
            )
        if not check_type(value, fields[key]):
            raise ConfigError(
                f"Config key '{where}.{key}' has value {value!r} of type {type(value).__name__}, but {owner} "
                f"expects {_describe_type(fields[key])}. Pass e.g. {where}.{key}=<{_describe_type(fields[key])}>."
            )


def signature_fields(cls: type) -> tuple[dict[str, Any], set[str], bool]:
    """Accepted keyword names of ``cls.__init__`` with their annotations, the required ones, and
    whether it takes ``**kwargs`` (then unknown keys cannot be detected)."""
    sig = inspect.signature(cls.__init__)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:
        hints = {}
    fields, required, var_kw = {}, set(), False
    for name, p in list(sig.parameters.items())[1:]:
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
            continue
        if p.kind is p.VAR_POSITIONAL:
            continue
        fields[name] = hints.get(name, Any)
        if p.default is p.empty:
            required.add(name)
    return fields, required, var_kw


def locate(target: str, where: str, restricted: bool = True) -> type:
    """Import the class named by ``_target_``; ``restricted`` (the default) allows only this project's
    and its libraries' modules (a user's own callback is the one unrestricted target)."""
    if restricted and (not isinstance(target, str) or not target.startswith(ALLOWED_TARGET_PREFIXES)):
        raise ConfigError(
            f"'{where}._target_' is {target!r}: only classes under {', '.join(ALLOWED_TARGET_PREFIXES)} may be "
            f"built from a config. Point it at a class of this project, e.g. arch.blocks.attention.Attention."
        )
    module_name, _, attr = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        hint = "" if target.startswith(ALLOWED_TARGET_PREFIXES) else " Check the module is on PYTHONPATH."
        raise ConfigError(f"'{where}._target_' is {target!r}, which cannot be imported ({err}).{hint}") from err


def check_spec(
    spec: Mapping[str, Any],
    where: str,
    offered: Mapping[str, Any] | None = None,
    supplied: typing.Iterable[str] = (),
    cls: type | None = None,
    **extra: Any,
) -> tuple[type, dict[str, Any], dict[str, Any]]:
    """Check ``spec`` (a mapping with ``_target_``) against its class's signature without building it:
    returns the class, the configured keyword arguments and the caller's arguments. ``extra`` are
    arguments the caller supplies itself (such as ``d_model`` and ``layer_idx`` for a block) and may
    not appear in ``spec``; ``offered`` ones (such as a block's ``n_layers``) are supplied the same
    way to a class whose signature names them, and left out otherwise; ``supplied`` names arguments
    the caller will pass later (their values are not known yet). ``cls``: the class, when the caller
    located ``_target_`` itself."""
    if not isinstance(spec, Mapping) or "_target_" not in spec:
        raise ConfigError(f"'{where}' must be a mapping with a '_target_' key, got {spec!r}.")
    cls = cls or locate(spec["_target_"], where)
    kwargs = {k: v for k, v in spec.items() if k != "_target_"}
    fields, required, var_kw = signature_fields(cls)
    extra = {**extra, **{k: v for k, v in (offered or {}).items() if k in fields}}
    own = set(extra) | set(supplied)
    clash = set(kwargs) & own
    if clash:
        raise ConfigError(
            f"'{where}' sets {sorted(clash)}, which the framework sets itself; remove them from the config."
        )
    if not var_kw:
        check_kwargs(where, kwargs, {k: v for k, v in fields.items() if k not in own}, cls.__name__)
    missing = required - set(kwargs) - own
    if missing:
        raise ConfigError(f"'{where}' is missing required key(s) {sorted(missing)} for {cls.__name__}.")
    return cls, kwargs, extra


def build(cls: type, kwargs: Mapping[str, Any], where: str, **extra: Any) -> Any:
    """``cls(**kwargs, **extra)``, with a value the class rejects (a ``ValueError``, a failed
    assertion, a size that does not divide) turned into a `ConfigError` that names ``where``."""
    try:
        return cls(**kwargs, **extra)
    except ConfigError:
        raise
    except (ValueError, AssertionError, ZeroDivisionError, RuntimeError, TypeError) as err:
        shown = ", ".join(f"{k}={v!r}" for k, v in {**kwargs, **extra}.items() if not isinstance(v, (list, dict)) or len(str(v)) < 60)
        raise ConfigError(
            f"'{where}' ({cls.__name__}) cannot be built with {shown}: {type(err).__name__}: {err}. "
            f"Fix these values on the command line or in the YAML file."
        ) from err


def instantiate(spec: Mapping[str, Any], where: str, offered: Mapping[str, Any] | None = None, **extra: Any) -> Any:
    """Validate and build ``spec`` (see `check_spec`; bad values become a `ConfigError`, see `build`)."""
    cls, kwargs, extra = check_spec(spec, where, offered, **extra)
    return build(cls, kwargs, where, **extra)


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The valid range of a numeric config value; None leaves that side open."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def holds(self, value: Any) -> bool:
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return True  # None (where allowed) and non-numbers: the type check's business
        return not (
            (self.gt is not None and not value > self.gt)
            or (self.ge is not None and not value >= self.ge)
            or (self.lt is not None and not value < self.lt)
            or (self.le is not None and not value <= self.le)
        )

    def describe(self) -> str:
        low = f"> {self.gt:g}" if self.gt is not None else f">= {self.ge:g}" if self.ge is not None else ""
        high = f"< {self.lt:g}" if self.lt is not None else f"<= {self.le:g}" if self.le is not None else ""
        return " and ".join(p for p in (low, high) if p)


def bounded(default: Any = dataclasses.MISSING, *, gt=None, ge=None, lt=None, le=None, **kwargs: Any) -> Any:
    """A dataclass field whose value `from_mapping` checks against a range, e.g. ``lr: float = bounded(3e-3, gt=0)``."""
    return dataclasses.field(default=default, metadata={"bounds": Bounds(gt, ge, lt, le)}, **kwargs)


def check_bounds(where: str, name: str, value: Any, bounds: Bounds, example: Any = None) -> None:
    """Raise ConfigError if ``value`` (of key ``where.name``) is outside ``bounds``."""
    if bounds.holds(value) and not (isinstance(value, float) and not math.isfinite(value)):
        return
    hint = f" (the default is {example!r})" if example is not None and example is not dataclasses.MISSING else ""
    raise ConfigError(
        f"Config key '{where}.{name}' is {value!r}, but it must be {bounds.describe() or 'finite'}{hint}. "
        f"Set it to a valid value on the command line ({where}.{name}=...) or in the YAML file."
    )


def from_mapping(schema: type, values: Mapping[str, Any], where: str) -> Any:
    """Build the dataclass ``schema`` from ``values`` after checking keys, types and ranges."""
    hints = typing.get_type_hints(schema)
    fields = {f.name: hints[f.name] for f in dataclasses.fields(schema)}
    check_kwargs(where, values, fields, schema.__name__)
    missing = [
        f.name
        for f in dataclasses.fields(schema)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in values
    ]
    if missing:
        raise ConfigError(f"'{where}' is missing required key(s) {missing} for {schema.__name__}.")
    for f in dataclasses.fields(schema):
        if "bounds" in f.metadata and f.name in values:
            check_bounds(where, f.name, values[f.name], f.metadata["bounds"], f.default)
    return schema(**values)
