"""Print one table from several test.py JSON files (the first is the dense reference for Δ_T).

    python Scripts/results_table.py dense.json adapmtl.json [more.json ...] [--labels dense AdapMTL ...]

Δ_T is taken from each JSON when test.py computed it (``--reference``), else recomputed against the first
file.  Sparsities are shown in percent.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from main.scores import UndefinedDelta, delta_t
from main.tables import format_table
from main.tasks import metric_directions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="test.py --json outputs; the first is the dense reference")
    parser.add_argument("--labels", nargs="+", help="one label per file (default: the file stems)")
    parser.add_argument("--style", default="nyuv2", help="metric style of the files (default: nyuv2)")
    ns = parser.parse_args(argv)
    labels = ns.labels or [Path(f).stem for f in ns.files]
    if len(labels) != len(ns.files):
        parser.error("--labels needs one label per file")
    results = [json.loads(Path(f).read_text()) for f in ns.files]
    reference = results[0]["metrics"]
    directions = metric_directions(ns.style, list(reference))
    rows = []
    for label, res in zip(labels, results):
        try:
            delta = res.get("delta_t") or delta_t(res["metrics"], reference, directions)
        except UndefinedDelta as e:
            print(f"warning: no Δ_T for {label}: {e}", file=sys.stderr)
            delta = None
        sparsity = {"components": {c: 100 * v for c, v in res["sparsity"]["components"].items()},
                    "overall": 100 * res["sparsity"]["overall"]}
        rows.append((label, {"metrics": res["metrics"], "delta_t": delta, "sparsity": sparsity}))
    print(format_table(rows, directions=directions))
    print("sparsity columns in %; Δ_T in % against the first row (paper definition: per task the signed sum of "
          "relative changes over its metrics, then the mean over tasks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
