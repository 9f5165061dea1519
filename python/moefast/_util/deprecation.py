"""Keywords of an older calling form that still work for one release: a function wrapped by
`old_keywords` turns them into its current arguments and warns once per call, naming
each old keyword and where it goes now."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

#: Each old keyword's new home: the argument and the option class, and its field there,
#: e.g. "topology" -> ("cluster=moefast.Cluster", "topology").
Homes = dict[str, tuple[str, str]]

#: Turns a call's (args, kwargs) into the current form's, with the old keywords found and
#: their homes; a call without old keywords comes back unchanged, with no homes.
Translate = Callable[
    [tuple[Any, ...], dict[str, Any]], tuple[tuple[Any, ...], dict[str, Any], Homes]
]


def old_keywords(translate: Translate) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A decorator: calls in the old form are translated by ``translate`` and warned about
    with one DeprecationWarning (attributed to the caller); calls in the current form pass
    through unchanged. Type checkers see the current signature only."""

    def wrap(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def call(*args: Any, **kwargs: Any) -> R:
            args, kwargs, old = translate(args, kwargs)
            if old:
                warn_old_keywords(func.__name__, old, stacklevel=3)
            return func(*args, **kwargs)

        return call

    return wrap


def regroup(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    fields: dict[str, tuple[str, str]],
    classes: dict[str, Callable[..., Any]],
) -> tuple[tuple[Any, ...], dict[str, Any], Homes]:
    """A `Translate` for functions called ``f(first, cluster, slots_per_gpu=None, *,
    option=Class(...), ...)``: the old keywords (``fields``: keyword -> (option, field))
    are gathered into the option classes (``classes``: option -> class), the GPUs and
    slots with them into ``cluster`` whether they came as keywords or positionally. An
    old ``objective`` is one given as a string. A re-plan budget without ``current`` is
    refused as it was: ValueError."""
    old = [
        name
        for name, value in kwargs.items()
        if name in fields
        and name != "slots_per_gpu"  # a keyword of both forms
        and (name != "objective" or isinstance(value, str))
    ]
    if not old:
        return args, kwargs, {}
    kwargs = dict(kwargs)
    groups: dict[str, dict[str, Any]] = {}
    for name in old:
        option, field = fields[name]
        groups.setdefault(option, {})[field] = kwargs.pop(name)
    if "cluster" in groups:
        cluster = groups["cluster"]
        if "num_gpus" in cluster:
            if len(args) > 1 or "cluster" in kwargs:
                raise TypeError("num_gpus is given twice: as a keyword and as cluster")
            if "slots_per_gpu" in kwargs:
                cluster["slots_per_gpu"] = kwargs.pop("slots_per_gpu")
                old.append("slots_per_gpu")
        else:
            given = args[1] if len(args) > 1 else kwargs.pop("cluster", None)
            cluster_class: Any = classes["cluster"]
            if isinstance(given, cluster_class):
                raise TypeError(
                    f"{', '.join(cluster)} given beside a Cluster: put them in the Cluster"
                )
            slots = args[2] if len(args) > 2 else kwargs.pop("slots_per_gpu", None)
            cluster.update(num_gpus=given, slots_per_gpu=slots)
        args = args[:1]
    for option, values in groups.items():
        if kwargs.get(option) is not None:
            raise TypeError(
                f"{', '.join(values)} given beside {option}=: put them in the"
                f" {classes[option].__name__}"
            )
        if option == "moves" and values.get("current") is None:
            if values.get("max_moves") is not None or values.get("copy_cost") is not None:
                raise ValueError(
                    "max_moves needs current= (the placement being served), and so does copy_cost"
                )
            kwargs[option] = None
            continue
        kwargs[option] = classes[option](**values)
    homes = {
        name: (f"{fields[name][0]}=moefast.{classes[fields[name][0]].__name__}", fields[name][1])
        for name in old
    }
    return args, kwargs, homes


def warn_old_keywords(function: str, old: Homes, stacklevel: int = 2) -> None:
    """One DeprecationWarning: ``function``'s old keywords and the new home of each."""
    by_home: dict[str, list[tuple[str, str]]] = {}
    for name, (home, field) in old.items():
        by_home.setdefault(home, []).append((name, field))
    where = "; ".join(
        f"{', '.join(n for n, _ in pairs)} go in {home}({', '.join(f'{f}=...' for _, f in pairs)})"
        for home, pairs in by_home.items()
    )
    warnings.warn(
        f"{function}(): deprecated keywords, removed in the next release: {where}",
        DeprecationWarning,
        stacklevel=stacklevel,
    )
