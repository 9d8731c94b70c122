"""The body of ``test.py`` (usage: that file's docstring): evaluate a checkpoint, print and write its results."""

from __future__ import annotations

import json
from pathlib import Path

from main.atomic import atomic_write_text
from main.cli.args import parse_test_args
from main.device import resolve_device
from main.evaluate import evaluate_checkpoint
from main.monitor import want_progress
from main.output_file import RESULTS_JSON, check_output_file
from main.tables import format_table


def main(argv: list[str] | None = None) -> int:
    ns = parse_test_args(argv)
    device = resolve_device(ns.device)
    if ns.json is not None:  # checked now, not after a long evaluation; never an input, a checkpoint, a device
        check_output_file(ns.json, "--json", RESULTS_JSON, {"--path": ns.path, "--reference": ns.reference},
                          overwrite=ns.overwrite)
    result = evaluate_checkpoint(ns.path, device, ns.split, batch_size=ns.batch_size, data_root=ns.data_root,
                                 metric_definitions=ns.metric_definitions, reference=ns.reference,
                                 show_progress=want_progress(ns.progress))
    label = ns.label or Path(ns.path).parent.name or Path(ns.path).stem
    print(f"{ns.path}  ({result['dataset']}, {result['architecture']}, {ns.split} split, "
          f"iteration {result['iter']})")
    print(format_table([(label, result)]))
    params = result["params"]
    print(f"parameters: {params['nonzero']:,} non-zero of {params['total']:,} "
          f"(overall thresholded-weight sparsity {100 * result['sparsity']['overall']:.2f}%)")
    flops = result["flops"]
    print(f"conv FLOPs per input: {flops['nonzero']:,} on non-zero weights of {flops['dense']:,} dense "
          f"({flops['nonzero'] / max(flops['dense'], 1):.3f}×)")
    if ns.json is not None:
        Path(ns.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(ns.json, json.dumps(result, indent=1))
        print(f"wrote {ns.json}")
    return 0

