"""The run configurations that ship inside the package (``core/configs/*.yaml``).

They are package data, so ``twotower run --config shop`` works from any folder once the wheel
is installed: :func:`core.config.load_config` reads an existing file first and otherwise asks
:func:`shipped_config` for the shipped config of that name. Relative paths inside them
(``data.path``, ``publish.store``) stay relative to the current folder, where a user's data and
runs belong.

Files are found through :mod:`importlib.resources`, never a path relative to the checkout.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: The config ``twotower run`` / ``compile`` / ``submit`` / ``schedule`` use without ``--config``.
DEFAULT_CONFIG = "shop"
SUFFIX = ".yaml"


def shipped_names() -> list[str]:
    """Names of the shipped configs (``shop``, ``movielens``, ...), sorted."""
    return sorted(entry.name[:-len(SUFFIX)] for entry in resources.files(__name__).iterdir()
                  if entry.name.endswith(SUFFIX))


def shipped_config(name: str) -> Path | None:
    """The shipped config called ``name`` (``shop`` or ``shop.yaml``), or None.

    Only a bare name qualifies: ``configs/shop.yaml`` or ``./shop`` is a path the user meant,
    and a missing path must not quietly become a shipped file.
    """
    if not name or Path(name).name != name or name.startswith("."):
        return None
    stem = name[:-len(SUFFIX)] if name.endswith(SUFFIX) else name
    if stem not in shipped_names():
        return None
    return Path(str(resources.files(__name__) / f"{stem}{SUFFIX}"))
