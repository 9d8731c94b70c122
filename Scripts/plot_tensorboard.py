"""Draw the training curves (component sparsity, task weights, thresholds tau) of runs as PNG files.

    python Scripts/plot_tensorboard.py RUN_DIR [RUN_DIR ...] [--out DIR] [--labels LABEL ...]

RUN_DIR is a training run's --save_dir (it holds the TensorBoard event files; a resumed run's files are
merged).  Several runs are drawn side by side, one panel each, with the same colour per component.  The PNGs
go to --out (default: <first RUN_DIR>/plots/) and their paths are printed; a figure no run has data for
(thresholds of a dense run) is skipped with a note.  Works on any run, a GPU run copied from a cluster too.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bench.plots import SPARSITY_PNG, THRESHOLDS_PNG, WEIGHTS_PNG, plot_training_curves, read_scalars
from main.errors import UserError, cli_main
from main.output_file import PNG, check_output_file


def default_labels(runs: list[str]) -> list[str]:
    """The folder names, or the paths as given when two runs share a folder name (labels must differ)."""
    names = [Path(r).resolve().name or r for r in runs]
    return names if len(set(names)) == len(names) else list(runs)


def show_notes() -> None:
    """Print bench.plots' notes (a figure or run left out) to stderr; only when run as a script, so that
    calling ``main`` in-process does not attach handlers to the caller's loggers."""
    notes = logging.getLogger("adapmtl.plots")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("note: %(message)s"))
    notes.addHandler(handler)
    notes.setLevel(logging.INFO)
    notes.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="training run folders (--save_dir)")
    parser.add_argument("--out", help="folder for the PNGs (default: <first RUN_DIR>/plots)")
    parser.add_argument("--labels", nargs="+", help="one panel title per run (default: the folder names)")
    ns = parser.parse_args(argv)
    labels = ns.labels or default_labels(ns.runs)
    if len(labels) != len(ns.runs):
        raise UserError(f"--labels got {len(labels)} labels for {len(ns.runs)} runs; give one label per RUN_DIR")
    if len(set(labels)) != len(labels):
        raise UserError(f"--labels must differ from each other, got {' '.join(labels)}")

    out = Path(ns.out) if ns.out else Path(ns.runs[0]) / "plots"
    for name in (SPARSITY_PNG, WEIGHTS_PNG, THRESHOLDS_PNG):  # before reading: only free names or earlier PNGs
        check_output_file(out / name, "--out", PNG)
    runs = {label: read_scalars(run) for label, run in zip(labels, ns.runs)}
    try:
        written = plot_training_curves(runs, out)
    except OSError as e:
        raise UserError(f"cannot write the plots to {out}: {e.strerror or e}; pass a writable --out") from e
    if not written:
        raise UserError(f"no sparsity, task-weight or threshold scalars in {', '.join(ns.runs)}; "
                        "are these AdapMTL training runs (baseline.py / finetune.py --save_dir)?")
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    show_notes()
    cli_main(main)
