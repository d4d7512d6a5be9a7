"""Training: optimizer builder, mesh and sharding rules, train/eval steps, loop, checkpoints."""
