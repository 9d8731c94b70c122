"""Hard-prune a trained checkpoint (or a fresh initialisation, for at-init criteria) to a target sparsity.

    python pruning.py --load_checkpoint RUN/segment_semantic_normal_depth_zbuffer.model --method magnitude \\
                      --prune_ratio 0.9 --save_dir outputs/pruned_mag90
    python pruning.py --load_checkpoint CKPT --method magnitude --prune_ratio 0.9 --backbone_sparsity 0.6 ...
    python pruning.py --config configs/synthetic.yaml --method snip --prune_ratio 0.9 --save_dir outputs/snip90

Writes ``<save_dir>/<tasks>.model`` (weights with the pruned ones zeroed, the masks, the config) and
``<save_dir>/masks.json`` (sparsity per layer, per component, overall), and prints the same as a table.
Then: ``python finetune.py --load_checkpoint <save_dir>/<tasks>.model --save_dir ...``.
"""

from main.errors import cli_main
from SOTA_methods.cli import main

if __name__ == "__main__":
    cli_main(main)
