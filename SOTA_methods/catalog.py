"""Every pruning method of the package, registered: import this module to read the whole registry.

Each method is declared by the module that implements it (``register(Method(...))`` at its end); importing those
modules is what fills the registry, so this is the one list of them, one module per line.  A new method is a new
module with its ``register`` call, plus its line here.  ``pruning.py`` and the comparison (``bench``) read the
methods through this module; the commands that host their own methods read ``SOTA_methods.registry`` directly.
"""

from __future__ import annotations

from collections.abc import Callable

from . import (
    at_init,  # snip, disparse_static, random
    disparse,  # disparse_dynamic
    imp,  # imp
    lth,  # lth
    oneshot,  # magnitude, uniform, disparse_pt
    structured_train,  # taylor, cosprune
)
from .registry import Method, choose
from .registry import methods as registered

MODULES = (oneshot, at_init, disparse, imp, lth, structured_train)


def methods(where: Callable[[Method], bool] | None = None) -> list[Method]:
    """Every registered method (those ``where`` accepts), by kind, then in registration order."""
    return registered(where)


def one_shot_methods() -> list[Method]:
    """The methods ``pruning.py`` can apply (those with a one-shot step), of every module, whatever was imported."""
    return methods(lambda m: m.prune is not None)


def get(name: str) -> Method:
    """The method called ``name``; a ``ConfigError`` naming every known method otherwise."""
    return choose(name, methods())
