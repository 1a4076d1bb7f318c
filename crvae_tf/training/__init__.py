"""The training loop and its parts.

loop       train(model_dir): the gin-configurable loop (`train.*`)
triggers   periodic parts: summaries, image grids, validation with best-checkpoint selection, checkpointing
execution  several steps per tf.function call (`train.steps_per_execution`)
monitors   stops with a message: non-finite loss, discriminator collapse
"""
