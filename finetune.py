"""Fine-tune a pruned checkpoint with its masks enforced: pruned weights stay exactly zero.

    python finetune.py --load_checkpoint outputs/pruned_mag90/segment_semantic_normal_depth_zbuffer.model \\
                       --iters 1000 --save_dir outputs/ft_mag90 [--priority 1 2 1]
    python finetune.py --save_dir outputs/ft_mag90 --resume --iters 2000

The run starts from the checkpoint's config; flags given here override it (a new optimiser and schedule start
at iteration 0, as the reference ``finetune.py``).  Masks come from the checkpoint (or, for a checkpoint
without masks, from its zero weights); they zero the gradients of pruned weights and re-zero the weights
after every optimiser step.  Filters removed by structured pruning (taylor / cosprune) also keep their
BatchNorm gamma and beta at zero (``ChannelMasks``), on a fresh start and on --resume alike.
"""

from main.cli.finetune import main
from main.errors import cli_main

if __name__ == "__main__":
    cli_main(main)
