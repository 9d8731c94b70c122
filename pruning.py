"""Hard-prune a trained checkpoint (or a fresh initialisation, for at-init criteria) to a target sparsity.

    python pruning.py --load_checkpoint RUN/segment_semantic_normal_depth_zbuffer.model --method magnitude \\
                      --prune_ratio 0.9 --save_dir outputs/pruned_mag90
    python pruning.py --load_checkpoint CKPT --method magnitude --prune_ratio 0.9 --backbone_sparsity 0.6 ...
    python pruning.py --config configs/synthetic.yaml --method snip --prune_ratio 0.9 --save_dir outputs/snip90

Writes ``<save_dir>/<tasks>.model`` (weights with the pruned ones zeroed, the masks, the config) and
``<save_dir>/masks.json`` (sparsity per layer, per component, overall), and prints the same as a table.
Then: ``python finetune.py --load_checkpoint <save_dir>/<tasks>.model --save_dir ...``.
"""

from __future__ import annotations

from args import parse_prune_args
from main.errors import cli_main
from main.evaluation import format_table
from SOTA_methods.prune_run import prune


def main(argv: list[str] | None = None) -> int:
    cfg, opts = parse_prune_args(argv)
    summary = prune(cfg, opts)
    sp = summary["sparsity"]
    row = {"sparsity": {"components": {c: 100 * v for c, v in sp["components"].items()},
                        "overall": 100 * sp["overall"]}, "metrics": {}}
    print(format_table([(opts["method"], row)]))
    print(f"sparsity in %; {sp['nonzero']:,} of {sp['total']:,} prunable weights kept")
    print(f"wrote {summary['checkpoint']} and masks.json beside it")
    return 0


if __name__ == "__main__":
    cli_main(main)
