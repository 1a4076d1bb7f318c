"""Learning-rate schedules beyond Keras': the discriminator warm-up of the authors' `adam_gan` (porting notes 6.4).

Gin-free and serializable.
"""

import keras
import tensorflow as tf


class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A learning rate scaled by `factor_i` while the optimizer's step count is below `until_i`.

    The code's `adam_gan` (porting notes 6.4) runs the discriminator head at LR/50 for its first 10 calls and LR/5
    until call 30: `warmup=((10, 0.02), (30, 0.2))`. The count here is of discriminator steps actually taken
    (the code counts skipped calls too; skips are rare while the discriminator is still warming up).
    """

    def __init__(self, schedule, warmup):
        self.schedule = schedule
        self.warmup = tuple((int(until), float(factor)) for until, factor in warmup)
        if any(b[0] <= a[0] for a, b in zip(self.warmup, self.warmup[1:])):
            raise ValueError(f"warmup boundaries must increase, got {warmup}")

    def __call__(self, step):
        rate = self.schedule(step) if callable(self.schedule) else tf.constant(self.schedule, tf.float32)
        factor = tf.constant(1.0, tf.float32)
        for until, scale in reversed(self.warmup):
            factor = tf.where(tf.cast(step, tf.int64) < until, tf.constant(scale, tf.float32), factor)
        return tf.cast(rate, tf.float32) * factor

    def get_config(self):
        schedule = (
            keras.saving.serialize_keras_object(self.schedule)
            if isinstance(self.schedule, keras.optimizers.schedules.LearningRateSchedule)
            else self.schedule
        )
        return {"schedule": schedule, "warmup": [list(w) for w in self.warmup]}

    @classmethod
    def from_config(cls, config):
        schedule = config["schedule"]
        if isinstance(schedule, dict):
            schedule = keras.saving.deserialize_keras_object(schedule)
        return cls(schedule, config["warmup"])
