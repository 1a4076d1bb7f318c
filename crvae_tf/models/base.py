"""What every model family shares: encoder -> latent head -> decoder, parameter groups, optimizers per
group, the two noise streams, and the per-time-step bookkeeping (KL trackers, active units, step weights).

Gin-free.
"""

import keras
import tensorflow as tf

from crvae_tf.architectures import folding
from crvae_tf.architectures import replicas
from crvae_tf.objectives import bounds


class LatentVariableModel(keras.Model):
    """What every model family shares: encoder -> latent head -> decoder, and two noise streams.

    Subclasses set `encoder`, `latent_head`, `decoder` and call `_init_noise_streams(seed)` in `__init__`.
    """

    def _init_noise_streams(self, seed):
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="seed_generator")
        # Evaluation draws from its own stream, restarted before every evaluation pass
        # (`reset_evaluation_rng`): validating never perturbs the training stream, so a resumed run
        # matches an uninterrupted one, and every checkpoint is scored with the same noise.
        self.eval_seed_generator = keras.random.SeedGenerator(
            None if seed is None else seed + 1, name="eval_seed_generator"
        )
        self._eval_initial_state = keras.ops.convert_to_numpy(self.eval_seed_generator.state)

    @property
    def latent_dim(self) -> int:
        return self.latent_head.latent_dim

    # Evaluation mode runs the encoder and decoder with BatchNorm folded into the convolutions before it
    # (`architectures.folding`: the same function up to float32 rounding, ~5% faster; gin: `model.fold_batch_norm`).
    fold_batch_norm = True

    def _network(self, network, training):
        """`network` as called in this mode: folded in evaluation mode when `fold_batch_norm` and it is a Sequential."""
        if training or not self.fold_batch_norm or not isinstance(network, keras.Sequential):
            return lambda x: network(x, training=training)
        cache = self.__dict__.setdefault("_folded_networks", {})  # plain dict: not tracked, not checkpointed
        if id(network) not in cache:
            cache[id(network)] = folding.FoldedInference(network)
        return cache[id(network)]

    def encode(self, images, training=False):
        """`[batch, H, W, C]` pixels in `input_range` -> (loc, log_variance), each float32 `[batch, latent_dim]`.

        Under a mixed-precision policy the networks compute in bfloat16; the posterior parameters, the
        decoder outputs and hence every loss and bound are float32.
        """
        features = self._network(self.encoder, training)(images)
        loc, log_variance = self.latent_head.infer(features, training=training)
        return tf.cast(loc, tf.float32), tf.cast(log_variance, tf.float32)

    def decode(self, z, training=False):
        """`[batch, latent_dim]` -> the decoder's float32 output `[batch, H, W, C]` (the VAE family: Bernoulli
        logits; the adversarial family: tanh images in [-1, 1])."""
        features = self.latent_head.generate(z, training=training)
        return tf.cast(self._network(self.decoder, training)(features), tf.float32)

    def call(self, images, training=False):
        """Decoder output for the posterior mean (deterministic) of images in `input_range`."""
        loc, _ = self.encode(images, training=training)
        return self.decode(loc, training=training)

    def _generator_groups(self):
        """The encoder / latent_head / decoder parameter groups (building the model first if needed)."""
        if not self.built:
            self.build()
        groups = self.latent_head.variable_groups()
        groups["encoder"] = list(self.encoder.trainable_variables) + groups["encoder"]
        groups["decoder"] = groups["decoder"] + list(self.decoder.trainable_variables)
        return groups

    def _attach_optimizers(self, groups, optimizers, clip_values=None, **kwargs):
        """Builds one optimizer per non-empty group of `groups` (every group of `self.GROUPS` must be covered)
        and compiles with the encoder's as Keras' `optimizer` (so Keras builds no unused default one)."""
        missing = sorted(set(groups) - set(optimizers))
        unknown = sorted(set(optimizers) - set(self.GROUPS))
        if missing or unknown:
            raise ValueError(f"optimizers must cover the groups {sorted(groups)}; missing {missing}, unknown {unknown}")
        self.group_optimizers = {name: optimizers[name] for name in self.GROUPS if name in groups}
        self.group_clip_values = dict(clip_values or {})
        for name, optimizer in self.group_optimizers.items():
            optimizer.build(groups[name])
        keras.Model.compile(
            self, optimizer=self.group_optimizers.get("encoder", next(iter(self.group_optimizers.values()))), **kwargs
        )

    DIAGNOSTICS = ("grad_norm", "param_norm", "update_ratio")
    # Whether `_apply` records the diagnostics, read when a step is traced: the training loop traces a second step
    # function without them for the steps between logging points (`train.diagnostics='logged_steps'`), which saves a
    # copy of every parameter per step (measured 36-57 ms of a 1.28 s MNIST crVAE step on 2 CPU cores).
    record_diagnostics = True

    def _init_trackers(self, names):
        """Creates the running-mean trackers: the family's `names`, then the per-time-step ones (`active_units`,
        `kl_step_<t>`, `active_units_step_<t>`, t = 1..T), and the training diagnostics per parameter group
        (`grad_norm_<group>`, `param_norm_<group>`, `update_ratio_<group>`), which only `train_step` reports."""
        steps = range(1, self.num_time_steps + 1)
        names = (
            list(names) + ["active_units"] + [f"kl_step_{t}" for t in steps] + [f"active_units_step_{t}" for t in steps]
        )
        self._trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self._diagnostics = {
            f"{kind}_{group}": keras.metrics.Mean(name=f"{kind}_{group}")
            for group in self.GROUPS
            for kind in self.DIAGNOSTICS
        }
        self.group_optimizers = {}
        self.group_clip_values = {}

    @property
    def metrics(self):
        return list(self._trackers.values()) + list(self._diagnostics.values())

    def _diagnostic_results(self) -> dict:
        """Running means of the diagnostics of the groups that have an optimizer."""
        return {
            f"{kind}_{group}": self._diagnostics[f"{kind}_{group}"].result()
            for group in self.group_optimizers
            for kind in self.DIAGNOSTICS
        }

    def _apply(self, name, gradients, variables, taken=None):
        """One optimizer step of group `name`, after its optional element-wise gradient clamp.

        Also records the group's diagnostics: the global norm of the (clamped) gradient, of the parameters after
        the step, and the relative size of the step ||theta_new - theta_old|| / ||theta_old||. Under a strategy
        with R replicas the gradient is each replica's share (the gradient of its batch mean / R; Keras' optimizer
        sums the shares), so `grad_norm_<group>` is the mean over replicas of the norms of the shares.

        `taken` (a boolean scalar, identical on every replica) makes the step conditional without `tf.cond`, which
        fails around `optimizer.apply` under a `tf.distribute` strategy: the optimizer steps, then the group's
        variables and the optimizer's own (moments, iteration count) are put back where `taken` is False, which
        is an exact skip; the diagnostics count only taken steps. With `record_diagnostics` False (at trace time)
        only the step is taken.
        """
        clip = self.group_clip_values.get(name)
        if clip:
            context = replicas.replica_context()
            if context is None:
                gradients = [tf.clip_by_value(g, -clip, clip) for g in gradients]
            else:
                # The clamp applies to the gradient of the global batch, so it is summed over the replicas first;
                # each replica then hands the optimizer (which sums again) 1/R of the clamped gradient.
                share = 1.0 / context.num_replicas_in_sync
                gradients = [tf.clip_by_value(g, -clip, clip) * share for g in replicas.all_reduce_sum(gradients)]
        optimizer = self.group_optimizers[name]
        if not (self.record_diagnostics or taken is not None):
            optimizer.apply(gradients, variables)
            return
        before = [tf.identity(v) for v in variables]
        if taken is not None:
            state = list(optimizer.variables)
            state_before = [tf.identity(v) for v in state]
        optimizer.apply(gradients, variables)
        weight = None
        if taken is not None:
            for variable, old in zip(list(variables) + state, before + state_before):
                variable.assign(tf.where(taken, tf.convert_to_tensor(variable), old))
            weight = tf.cast(taken, tf.float32)
        if not self.record_diagnostics:
            return
        old_norm = tf.linalg.global_norm(before)
        step_norm = tf.linalg.global_norm([tf.convert_to_tensor(v) - b for v, b in zip(variables, before)])
        self._diagnostics[f"grad_norm_{name}"].update_state(tf.linalg.global_norm(gradients), sample_weight=weight)
        self._diagnostics[f"param_norm_{name}"].update_state(
            tf.linalg.global_norm(list(variables)), sample_weight=weight
        )
        self._diagnostics[f"update_ratio_{name}"].update_state(
            step_norm / tf.maximum(old_norm, 1e-12), sample_weight=weight
        )

    def _normal(self, shape, training, batch_axis=0):
        """N(0, 1) float32 noise from the training stream (`training`) or the evaluation one; under a strategy
        each replica's rows of the global batch's draw (`architectures.replicas.normal`)."""
        generator = self.seed_generator if training else self.eval_seed_generator
        return replicas.normal(shape, generator, dtype="float32", batch_axis=batch_axis)

    def _apply_split(self, names, groups, gradients):
        """Applies a flat gradient list laid out as the concatenation of `groups[name]` for `names`."""
        start = 0
        for name in names:
            size = len(groups[name])
            self._apply(name, gradients[start : start + size], groups[name])
            start += size

    def _update_latent_trackers(self, kl_steps, loc):
        """Per-time-step KL means (`kl_step_<t>`), active units in total and per time step, of a batch."""
        kl_means = tf.reduce_mean(kl_steps, axis=0)
        per_step = bounds.active_units_per_step(loc, self.num_time_steps)
        for t in range(self.num_time_steps):
            self._trackers[f"kl_step_{t + 1}"].update_state(kl_means[t])
            self._trackers[f"active_units_step_{t + 1}"].update_state(per_step[t])
        self._trackers["active_units"].update_state(tf.reduce_sum(per_step))

    def reset_evaluation_rng(self):
        """Restarts the evaluation noise stream (call before each evaluation pass)."""
        self.eval_seed_generator.state.assign(self._eval_initial_state)

    @staticmethod
    def _images(data):
        return data[0] if isinstance(data, (tuple, list)) else data
