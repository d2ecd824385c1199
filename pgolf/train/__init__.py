"""Training: the loop (validation and checkpointing come in as hooks), checkpoints, run logs."""
