"""Copy fields from a config section (or an argparse namespace) into keyword arguments.

The low-level classes take explicit settings dataclasses; each has a ``from_config`` that maps
config fields onto them. Most keep their names, so one helper copies them by name and the
renamed ones are written out beside it, instead of a ``name=section.name`` line per field.
"""

from __future__ import annotations

from typing import Any


def pick(source: object, *names: str, **renamed: str) -> dict[str, Any]:
    """``{name: source.name}`` for each of ``names``, plus ``{key: source.<field>}`` for ``renamed``.

    >>> from types import SimpleNamespace
    >>> pick(SimpleNamespace(a=1, b=2), "a", c="b")
    {'a': 1, 'c': 2}
    """
    out = {name: getattr(source, name) for name in names}
    out.update({key: getattr(source, attr) for key, attr in renamed.items()})
    return out
