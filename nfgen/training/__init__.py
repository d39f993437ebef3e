"""Training: the fit loop, checkpoints and logging."""
