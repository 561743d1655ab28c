"""Training: the loop (engine), checkpoints, and (later) distributed training."""
