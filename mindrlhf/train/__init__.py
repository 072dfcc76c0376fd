"""Training: the shared train step, optimizer and schedules, checkpoints, logging, and the stage trainers."""
