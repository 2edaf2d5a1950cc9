"""Training: the loop, optimizer and schedule, checkpoints, distributed set-up, logging."""
