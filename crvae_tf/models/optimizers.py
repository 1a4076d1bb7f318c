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

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        index = self._get_variable_index(variable)

        def handle(v):  # a Keras variable wraps a tf.Variable; under a strategy's update, v is the replica's copy
            return (v.value if isinstance(v, keras.Variable) else v).handle

        tf.raw_ops.ResourceApplyAdam(
            var=handle(variable),
            m=handle(self._momentums[index]),
            v=handle(self._velocities[index]),
            beta1_power=tf.pow(tf.cast(self.beta_1, dtype), step),
            beta2_power=tf.pow(tf.cast(self.beta_2, dtype), step),
            lr=tf.cast(learning_rate, dtype),
            beta1=tf.cast(self.beta_1, dtype),
            beta2=tf.cast(self.beta_2, dtype),
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
            use_locking=False,
        )
