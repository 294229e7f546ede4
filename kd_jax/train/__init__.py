"""Training system: state and optimizer, the jitted steps, checkpoints, metrics and the loop.

`kd_jax.train.loop.train_and_evaluate(config, workdir)` runs one whole (resumable) run.
"""
