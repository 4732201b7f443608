"""What a user's values become when recorded, and the checks on them: plain JSON for configs and
payloads, bounded reprs for messages, the engine settings' fingerprint, and scalar arguments.

One home for each rule, so a config is the same JSON whether the trainer (``Run``) or the vLLM
reader records it, and the same settings get the same fingerprint whoever hashes them.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from logprobe.storage import VOLATILE_ENGINE_FLAGS, flatten_flags

_MAX_DEPTH = 64
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def short_repr(value: Any, limit: int = 120) -> str:
    """A bounded repr for messages and records (a user's value may be a 10 MB string), without
    object addresses, so a message or a stored record is the same on every run."""
    try:
        text = _ADDRESS.sub("", repr(value))
    except Exception:  # a broken __repr__ must not replace the real error
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def real_number(
    name: str, value: Any, *, low: float | None = None, high: float | None = None, low_closed: bool = False
) -> float:
    """``value`` as a finite float above ``low`` (or equal, with ``low_closed``) and below ``high``,
    else an error naming it."""
    if isinstance(value, bool) or not hasattr(value, "__float__"):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {short_repr(value)}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError, RuntimeError) as exc:
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {short_repr(value)}") from exc
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {number}")
    above_low = low is None or number > low or (low_closed and number == low)
    if not above_low or (high is not None and not number < high):
        opening = "[" if low_closed else "("
        bounds = f"{opening}{'-inf' if low is None else low}, {'inf' if high is None else high})"
        raise ValueError(f"{name} must be in {bounds}, got {number}")
    return number


def whole_number(name: str, value: Any) -> int:
    """``value`` as an int (ints, integral floats, numpy/torch integer scalars), else an error naming it."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        as_int = int(value)
        exact = as_int == value
    except (TypeError, ValueError, OverflowError, RuntimeError) as exc:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {short_repr(value)}") from exc
    if not exact:
        raise TypeError(f"{name} must be an integer, got {short_repr(value)}")
    return as_int


def to_json(value: Any) -> str:
    """Standard JSON for user objects that may not be JSON (dataclasses, HF configs, Namespaces,
    tensors, sets, circular or very deep structures); never raises.

    What JSON cannot hold is recorded rather than refused, because a config that does not
    serialise must not stop a run from starting: NaN/Infinity become the strings ``"NaN"``,
    ``"Infinity"``, ``"-Infinity"`` (DuckDB's JSON functions reject the bare tokens), keys become
    strings, a cycle becomes ``"<circular reference>"`` and anything else its ``repr``.
    """
    return json.dumps(to_plain(value), sort_keys=True, allow_nan=False)


_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def to_plain(value: Any, max_depth: int = _MAX_DEPTH) -> Any:
    """``value`` as JSON-able data, by :func:`to_json`'s rules, containers at most ``max_depth``
    deep (vLLM's config objects reach every other one: the engine reader stops at 6)."""
    return _plain(value, 0, set(), max_depth)


def _plain(value: Any, depth: int, active: set[int], max_depth: int = _MAX_DEPTH) -> Any:
    """``value`` as JSON-able data; ``active`` holds the ids of the containers being converted."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else _NON_FINITE.get(value, "NaN")
    if type(value).__module__ == "torch" and type(value).__name__ == "dtype":
        return str(value).removeprefix("torch.")  # "float32", as vLLM and the engines table spell it
    if depth >= max_depth:
        return "<nested too deep>"
    if id(value) in active:
        return "<circular reference>"
    active.add(id(value))
    try:
        return _plain_container(value, depth + 1, active, max_depth)
    finally:
        active.discard(id(value))


def _plain_container(value: Any, depth: int, active: set[int], max_depth: int) -> Any:
    if isinstance(value, Mapping):
        return {_plain_key(k): _plain(v, depth, active, max_depth) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, depth, active, max_depth) for v in value]
    if isinstance(value, set | frozenset):
        items = [_plain(v, depth, active, max_depth) for v in value]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))
    if isinstance(value, enum.Enum):
        return value.name
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            try:
                out[f.name] = _plain(getattr(value, f.name), depth, active, max_depth)
            except Exception as exc:  # a property that raises must not lose the other fields
                out[f.name] = f"<unreadable: {type(exc).__name__}>"
        return out
    for method in ("to_dict", "model_dump", "tolist"):
        fn = getattr(value, method, None)
        if callable(fn):
            try:
                converted = fn()
            except Exception:  # a broken to_dict must not stop the run from starting
                break
            return _plain(converted, depth, active, max_depth)
    if hasattr(value, "__dict__") and type(value).__module__ == "argparse":
        return _plain(vars(value), depth, active, max_depth)
    return valid_text(short_repr(value, 2000))


def _plain_key(key: Any) -> str:
    if isinstance(key, str):
        return valid_text(key)
    if key is None or isinstance(key, bool | int | float):
        return json.dumps(key)  # JSON's own spelling: null, true, 1, 1.5, NaN
    return valid_text(short_repr(key, 2000))


def valid_text(text: str) -> str:
    """``text`` with lone surrogates replaced, so it can be written as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def fingerprint(flags: Mapping[str, Any]) -> str:
    """A stable 16-hex-digit hash of engine settings, ignoring ids, ports and paths
    (``storage.VOLATILE_ENGINE_FLAGS``): the rule for every fingerprint logprobe records.

    Values go through :func:`to_plain` (bounded depth, so a list that contains itself is fine), not
    ``str``: ``str`` of a set follows the process's hash seed and ``str`` of an object carries its
    address, so the same settings would hash differently in two processes.
    """
    if not isinstance(flags, Mapping):
        raise TypeError(f"flags must be a dict, got {type(flags).__name__}")
    try:
        flat = flatten_flags(dict(flags))
    except RecursionError:
        raise ValueError("flags nest too deeply (or contain themselves) to fingerprint") from None
    stable = {k: to_plain(v, max_depth=6) for k, v in flat.items() if not VOLATILE_ENGINE_FLAGS.search(k)}
    text = json.dumps(stable, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
