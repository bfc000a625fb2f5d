"""Help texts and bounds the subcommands share."""

__all__ = ["CHECKPOINT_HELP", "WEIGHTS_HELP", "OVERWRITE_HELP", "AT_LEAST"]

CHECKPOINT_HELP = "a checkpoint file, or a run folder (its newest checkpoint)"
WEIGHTS_HELP = "auto (the EMA weights when the checkpoint has them, as training reported), raw or ema"
OVERWRITE_HELP = "replace the output if it already exists (never one of the inputs)"
AT_LEAST = {"workers": 0, "batch_size": 1, "topk": 1, "repeats": 1, "batch": 1}  # counts argparse cannot bound
