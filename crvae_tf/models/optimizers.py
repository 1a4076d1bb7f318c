"""Adam with TensorFlow's fused update kernel. Gin-free and serializable."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable("crvae_tf")
class FusedAdam(keras.optimizers.Adam):
    """`keras.optimizers.Adam` whose per-variable update is TensorFlow's fused `ResourceApplyAdam` kernel.

    The same maths, slots (`momentums`, `velocities`), checkpoint keys and configuration as Keras' Adam
    (Kingma & Ba 2015, Algorithm 1 with the bias correction folded into the step size):
        lr_t = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
        m <- m + (g - m) (1 - beta_1);   v <- v + (g^2 - v) (1 - beta_2);   theta <- theta - lr_t m / (sqrt(v) + eps)
    but one pass over each variable instead of about a dozen elementwise ops: on 2 idle CPU cores, 10.9M float32
    parameters update in 9.2 ms against 24.8 ms (the MNIST crVAE has 15.5M). AMSGrad and sparse
    (IndexedSlices) gradients keep Keras' implementation.
    """

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        """One `apply`: the step's scalars (bias-correction powers, rate, betas, epsilon) are built once per dtype
        and shared by every variable's kernel (about 14 graph ops per variable before; a 76-variable model's
        optimizer graph shrinks by ~900 ops, which is trace time and per-step executor work)."""
        self._step_scalars = {}
        try:
            super()._backend_update_step(grads, trainable_variables, learning_rate)
        finally:
            self._step_scalars = None

    def _scalars(self, dtype, learning_rate):
        """(beta_1^t, beta_2^t, lr, beta_1, beta_2, epsilon) in `dtype`, t = iterations + 1 (read before any update
        of this step; `iterations` is incremented after all of them)."""
        cache = getattr(self, "_step_scalars", None)
        key = tf.as_dtype(dtype).name
        if cache is not None and key in cache:
            return cache[key]
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        scalars = (
            tf.pow(beta_1, step),
            tf.pow(beta_2, step),
            tf.cast(learning_rate, dtype),
            beta_1,
            beta_2,
            tf.cast(self.epsilon, dtype),
        )
        if cache is not None:
            cache[key] = scalars
        return scalars

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        beta1_power, beta2_power, lr, beta1, beta2, epsilon = self._scalars(dtype, learning_rate)

        def handle(v):  # a Keras variable wraps a tf.Variable; under a strategy's update, v is the replica's copy
            return (v.value if isinstance(v, keras.Variable) else v).handle

        tf.raw_ops.ResourceApplyAdam(
            var=handle(variable),
            m=handle(self._momentums[index]),
            v=handle(self._velocities[index]),
            beta1_power=beta1_power,
            beta2_power=beta2_power,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            epsilon=epsilon,
            grad=tf.cast(gradient, dtype),
            use_locking=False,
        )
