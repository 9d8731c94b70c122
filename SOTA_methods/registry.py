"""The method registry: every pruning method is declared once, by the module that implements it (timm style).

A ``Method`` says what the method is called (``--method`` / the comparison's cell names), what kind of method it is,
how tables label it, which options it adds to the command line, and what runs it.  ``pruning.py``'s ``--method``
choices and dispatch, the ``python -m SOTA_methods.<module>`` parsers and the comparison's method table
(``bench.compare_protocol``) all read it, so a method is named and described in one place; adding one is one new
module that calls ``register`` plus one import line in ``SOTA_methods.catalog``.

This module is a leaf (standard library and ``main.config`` only): the implementing modules import it to register,
and ``SOTA_methods.catalog`` imports them, so there is no import cycle.  Code that needs *every* method reads them
through ``catalog``; a command that only hosts its own methods (``at_init``, ``structured_train``) may read this
module directly, since its registrations run when it is imported.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from main.config import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from main.config import Config
    from main.distributed import DistInfo
    from main.masks import MaskSet
    from main.models import MultiTaskModel

# What a method does to the network and when; the order is the order of every listing (help, error messages).
KINDS = {
    "one-shot": "prunes a trained (or fresh) model once; fine-tune it afterwards with finetune.py",
    "at-init": "prunes the fresh initialisation once, then trains the masked network",
    "during-training": "changes the mask while it trains",
    "iterative": "prunes a trained model in rounds, training between them",
    "structured": "removes whole backbone filters",
}
PRUNING_PY = "pruning.py"  # the ``command`` of the methods that only pruning.py runs


class OptionGroup:
    """An argparse argument group (or parser) that remembers the destination of every option added to it.

    A method's options are parsed by the same parser as the training flags and split off afterwards by these
    names, so each option is written once, in the method's ``add_args``.  ``owner``: option -> the methods whose
    ``add_args`` added it (options the command adds for every method have none).
    """

    def __init__(self, group: argparse._ActionsContainer) -> None:
        self.group = group
        self.dests: list[str] = []
        self.owner: dict[str, list[str]] = {}

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = self.group.add_argument(*args, **kwargs)
        self.dests.append(action.dest)
        return action


@dataclass
class PruneInputs:
    """What a one-shot pruning step sees: the network at the pruning point and the data to score it on.

    ``options``: the method's own options (its ``add_args``).  ``dist``: under torchrun, the ranks whose scores are
    averaged before selecting (None: one process).  ``loss_weights``: λ of a weighted total loss (None: all 1).
    """

    cfg: Config
    model: MultiTaskModel
    masks: MaskSet
    sparsity: float
    batches: Sequence[Mapping[str, Tensor]]
    tasks: tuple[str, ...]
    device: torch.device
    class_weights: Tensor | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    dist: DistInfo | None = None
    loss_weights: Mapping[str, float] | None = None


RunFn = Callable[..., dict]  # (cfg, given, opts, dist_info=None, device=None) -> the masks.json summary
PruneFn = Callable[[PruneInputs], dict]  # prunes inputs.masks in place; -> extra entries of the pruning record
ArgsFn = Callable[[OptionGroup], None]


@dataclass(frozen=True)
class Method:
    """One pruning method.

    ``run``: the whole method from parsed options, as its ``command`` runs it (``python -m <command>``, or
    ``pruning.py``).  ``prune``: its one-shot step (score, select, mask ``inputs.masks``), which ``pruning.py``
    applies to a checkpoint or a fresh initialisation; None for methods that only exist as a training schedule.
    ``add_args``: the options that belong to this method alone.  ``needs_batches``: its scores are loss gradients,
    so the step needs training batches.
    """

    name: str
    kind: str
    label: str
    about: str
    run: RunFn
    command: str
    add_args: ArgsFn | None = None
    prune: PruneFn | None = None
    needs_batches: bool = False

    @property
    def usage(self) -> str:
        """How to run the whole method from a shell."""
        if self.command == PRUNING_PY:
            return f"python pruning.py --method {self.name}"
        return f"python -m {self.command}"


_METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry (once per name) and return it, so a module can keep it as a constant.

    ``python -m SOTA_methods.imp`` runs the module as ``__main__``; should something import it again by its name,
    the same declaration registers twice: the first one stays.  Two different methods of one name are an error.
    """
    if method.kind not in KINDS:
        raise ValueError(f"method {method.name!r}: kind {method.kind!r} is not one of {', '.join(KINDS)}")
    known = _METHODS.get(method.name)
    if known is None:
        _METHODS[method.name] = method
        return method
    if (known.kind, known.label, known.command) != (method.kind, method.label, method.command):
        raise ValueError(f"a method named {method.name!r} is already registered (by {known.command})")
    return known


def methods(where: Callable[[Method], bool] | None = None) -> list[Method]:
    """The registered methods (those ``where`` accepts), by kind in ``KINDS`` order, then in registration order."""
    order = list(KINDS)
    found = [m for m in _METHODS.values() if where is None or where(m)]
    return sorted(found, key=lambda m: order.index(m.kind))


def names(among: Iterable[Method]) -> str:
    """``a | b | c``: the way help texts list method names."""
    return " | ".join(m.name for m in among)


def choose(name: str | None, among: Sequence[Method], flag: str = "--method") -> Method:
    """The method called ``name`` among ``among``; a ``ConfigError`` naming the known ones otherwise."""
    for m in among:
        if m.name == name:
            return m
    if name is None:
        raise ConfigError(f"{flag} is required; choose one of: {', '.join(m.name for m in among)}")
    raise ConfigError(f"{flag} {name!r} is not known; choose one of: {', '.join(m.name for m in among)}")
