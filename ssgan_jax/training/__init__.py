"""Train and eval steps, the loop, data-parallel backends, checkpoints, metric records, pictures."""
