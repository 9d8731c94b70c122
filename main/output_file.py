"""An output file the user names (``test.py --json``, ``main.export --out``, plots): checked before any work.

Why: every write replaces its target by a rename (``main.atomic``), and a rename replaces whatever the name is.
Run as root, ``test.py --json /dev/full`` replaced the device node with a JSON file; a symbolic link (one to
``/proc/self/fd/1``) became a file; ``--json OTHER_RUN/<tasks>.model`` turned another run's checkpoint into JSON.
So a user-named output must be a free name or a regular file, none of the command's inputs, and, if it exists,
a file of the kind this writer writes (``OutputKind``: a results JSON, a sparse export, a compact model, a PNG);
a file of another kind (a checkpoint, a config, notes) is replaced only when ``--overwrite`` says so.  All of it
is checked before the command starts its work, so a refused command writes nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .atomic import not_replaceable
from .checkpoint import CheckpointError, load_checkpoint
from .config import ConfigError
from .run_dir import check_writable

JSON_LIMIT = 64 << 20  # a results JSON is kilobytes; a larger file is not one (and is not read whole)
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format (a zip archive)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class OutputKind:
    """What a writer writes: ``what`` names it in messages, ``is_one(path)`` recognises an existing file of it
    (which the writer may replace: running the same command twice is fine)."""

    what: str
    is_one: Callable[[Path], bool]


def starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


def is_json_with(key: str) -> Callable[[Path], bool]:
    """A recogniser of a JSON object holding ``key`` (e.g. ``metrics``: what test.py --json writes)."""

    def recognise(path: Path) -> bool:
        if path.stat().st_size > JSON_LIMIT:
            return False
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            return False
        return isinstance(data, dict) and key in data

    return recognise


def is_compact_model(path: Path) -> bool:
    """A torch file of this project with a ``compact`` entry (``main.export --compact``, ``SOTA_methods.compact``)."""
    if not starts_with(path, ZIP_MAGIC):
        return False
    try:
        return "compact" in load_checkpoint(path)
    except CheckpointError:
        return False


RESULTS_JSON = OutputKind("a results JSON (an object with 'metrics', as test.py --json writes)",
                          is_json_with("metrics"))
COMPACT_MODEL = OutputKind("a compact model (a checkpoint with a 'compact' entry)", is_compact_model)
PNG = OutputKind("a PNG image", lambda path: starts_with(path, PNG_MAGIC))


def what_it_is(path: Path) -> str:
    """How a message names an existing file of another kind: a checkpoint is the one users most need to hear."""
    try:
        torch_file = starts_with(path, ZIP_MAGIC)
    except OSError:
        return "an unreadable file"
    return "a checkpoint or other torch / zip file" if torch_file else "a file of another kind"


def check_output_file(out: str | os.PathLike, flag: str, kind: OutputKind,
                      inputs: Mapping[str, str | os.PathLike | None] | None = None,
                      overwrite: bool | None = None) -> Path:
    """``out`` (named by ``flag``) may be written by a writer of ``kind``; returns it as a ``Path``.

    Refused, before any work: an empty name; a symbolic link, folder, device, FIFO or socket (never replaced,
    whatever the flags); one of the command's ``inputs`` (flag -> path; a hard link or symlink to one counts); a
    folder that cannot be written; an existing file not of ``kind``, unless ``overwrite`` (the command's
    ``--overwrite``; None where the command has no such flag, so the message says to remove the file instead).
    """
    if not str(out).strip():
        raise ConfigError(f"{flag} is empty; name a file")
    path = Path(out)
    special = not_replaceable(path)
    if special == "a folder":
        raise ConfigError(f"{flag} {out} is a folder; name a file, e.g. {flag} {path / 'out'}")
    if special is not None:
        raise ConfigError(f"{flag} {out} is {special}, not a regular file; writing would replace it; name a "
                          f"regular file")
    check_not_an_input(path, flag, inputs or {})
    check_writable(path.parent, f"{flag} folder")
    if path.exists() and not overwrite and not recognised(path, kind):
        fix = "pass --overwrite to replace it" if overwrite is not None else "remove it first"
        raise ConfigError(f"{flag} {out} exists and is {what_it_is(path)}, not {kind.what}; {fix}, or choose "
                          f"another {flag}")
    return path


def recognised(path: Path, kind: OutputKind) -> bool:
    """``kind.is_one(path)``; a file that cannot even be read is not recognised (so not replaced unasked)."""
    try:
        return kind.is_one(path)
    except OSError:
        return False


def check_not_an_input(path: Path, flag: str, inputs: Mapping[str, str | os.PathLike | None]) -> None:
    """Writing an output that is also an input (``--json`` = ``--path``) would replace the input."""
    for in_flag, source in inputs.items():
        if source is None or not str(source).strip():
            continue
        same = os.path.abspath(path) == os.path.abspath(source) or (
            path.exists() and Path(source).exists() and os.path.samefile(path, source))
        if same:
            raise ConfigError(f"{flag} {path} is the {in_flag} input of this command; writing it would replace that "
                              f"file; choose another {flag}")
