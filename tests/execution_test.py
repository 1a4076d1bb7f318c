"""Several training steps per tf.function call (`training.execution`): the plan never crosses a due task, the
in-graph loop stops after a step the guard must see, and a run's numbers do not depend on the grouping."""

import os
from unittest import mock

import gin
import numpy as np
import tensorflow as tf

from crvae_tf import builders
from crvae_tf import models
from crvae_tf import runs
from crvae_tf.architectures import blocks
from crvae_tf.training import execution
from crvae_tf.training import loop
from crvae_tf.training import monitors

import testing_utils


class _Task:
    def __init__(self, every):
        self.every = every

    def due(self, step):
        return step % self.every == 0


class ExecutionPlanTest(tf.test.TestCase):
    def test_calls_stop_at_due_tasks_epoch_ends_and_the_last_step(self):
        plan = execution.ExecutionPlan(4, [_Task(5), _Task(9)], steps_per_epoch=7, max_steps=20)
        step, sizes = 0, []
        while step < 20:
            n = plan.steps(step)
            sizes.append(n)
            step += n
        # Boundaries: tasks at 5, 9, 10, 15, 18, 20; epochs end at 7, 14; at most 4 per call.
        self.assertEqual(np.cumsum(sizes).tolist(), [4, 5, 7, 9, 10, 14, 15, 18, 20])

    def test_fixed_setting_of_one_is_one_step_per_call(self):
        plan = execution.ExecutionPlan(1, [], steps_per_epoch=100, max_steps=10)
        self.assertEqual([plan.steps(s) for s in range(10)], [1] * 10)

    def test_auto_sizes_calls_from_the_measured_step_time(self):
        plan = execution.ExecutionPlan("auto", [], steps_per_epoch=10_000, max_steps=10_000)
        self.assertEqual(plan.steps(0), 1)
        plan.observe(1, 30.0)  # the first call traces: not used
        self.assertEqual(plan.steps(1), 1)
        plan.observe(1, 0.1)  # 0.1 s per step -> about a second per call
        self.assertEqual(plan.steps(2), 10)
        plan.observe(10, 0.0001)  # very fast steps: capped
        self.assertEqual(plan.steps(12), execution.AUTO_MAX_STEPS)
        plan.observe(4, 8.0)  # slow steps: one per call
        self.assertEqual(plan.steps(112), 1)

    def test_logged_steps_run_alone(self):
        logged = _Task(5)
        plan = execution.ExecutionPlan(8, [logged], steps_per_epoch=100, max_steps=12, recorded=logged.due)
        step, calls = 0, []
        while step < 12:
            n = plan.steps(step)
            calls.append((n, plan.records(step)))
            step += n
        # Steps 5 and 10 are logged: each runs alone with the recording step, the others never reach them.
        self.assertEqual(calls, [(4, False), (1, True), (4, False), (1, True), (2, False)])

    def test_bad_settings_are_refused(self):
        for bad in (0, -3, 2.5, "fast", True, None):
            with self.assertRaisesRegex(ValueError, "'auto' or an integer >= 1"):
                execution.ExecutionPlan(bad, [], 10, 10)


class MultiStepTest(tf.test.TestCase):
    def _counter_step(self):
        total = tf.Variable(0.0)

        @tf.function
        def step(batch):
            total.assign_add(batch)
            accuracy = tf.where(total >= 6.0, 1.0, 0.5)
            return {"loss": total * 1.0, "discriminator_batch_accuracy": accuracy}

        return total, step

    def test_runs_n_steps_and_returns_the_last_logs_and_batch(self):
        total, step = self._counter_step()
        dataset = tf.data.Dataset.from_tensor_slices([1.0, 2.0, 0.25, 0.5, 0.125])
        execute = execution.multi_step(step, dataset.element_spec)
        iterator = iter(dataset)
        ran, logs, batch = execute(iterator, tf.constant(2))
        self.assertEqual((int(ran), float(logs["loss"]), float(batch)), (2, 3.0, 2.0))
        ran, logs, batch = execute(iterator, tf.constant(3))
        self.assertEqual((int(ran), float(logs["loss"]), float(batch)), (3, 3.875, 0.125))
        self.assertEqual(float(total), 3.875)

    def test_stops_after_a_pinned_accuracy_or_a_non_finite_loss(self):
        _, step = self._counter_step()
        dataset = tf.data.Dataset.from_tensor_slices([1.0, 2.0, 3.0, 4.0, 5.0])
        execute = execution.multi_step(step, dataset.element_spec)
        iterator = iter(dataset)
        ran, logs, batch = execute(iterator, tf.constant(10))  # the total reaches 6 at the third batch: accuracy 1
        self.assertEqual((int(ran), float(batch), float(logs["discriminator_batch_accuracy"])), (3, 3.0, 1.0))
        ran, _, batch = execute(iterator, tf.constant(10))  # the first step of a call always runs
        self.assertEqual((int(ran), float(batch)), (1, 4.0))

        _, step = self._counter_step()
        dataset = tf.data.Dataset.from_tensor_slices([0.5, np.nan, 0.5, 0.5])
        execute = execution.multi_step(step, dataset.element_spec)
        ran, logs, batch = execute(iter(dataset), tf.constant(4))
        self.assertEqual(int(ran), 2)
        self.assertTrue(np.isnan(float(logs["loss"])) and np.isnan(float(batch)))

    def test_batch_structures_pass_through(self):
        @tf.function
        def step(batch):
            images, labels = batch
            return {"loss": tf.reduce_sum(images) + tf.cast(tf.reduce_sum(labels), tf.float32)}

        dataset = tf.data.Dataset.from_tensor_slices((np.ones((6, 2, 3), np.float32), np.arange(6))).batch(2)
        execute = execution.multi_step(step, dataset.element_spec)
        ran, logs, (images, labels) = execute(iter(dataset), tf.constant(3))
        self.assertEqual(int(ran), 3)
        self.assertEqual(float(logs["loss"]), 12.0 + 9.0)
        self.assertAllEqual(labels, [4, 5])
        self.assertEqual(images.shape, (2, 2, 3))

    def test_run_and_check_resets_the_collapse_count_over_unpinned_steps(self):
        guard = monitors.TrainingGuard(self.get_temp_dir(), 2, lambda: None)
        guard.collapse.update(1.0)  # one pinned step before the call

        def execute(iterator, n):
            return tf.constant(3), {"loss": tf.constant(1.0), "discriminator_batch_accuracy": tf.constant(1.0)}, 0.0

        ran, _, _ = execution.run_and_check(execute, None, 3, guard, first_step=1)
        self.assertEqual(ran, 3)
        self.assertEqual(guard.collapse.pinned, 1)  # steps 2 and 3 of the call were not pinned, step 4 is


class GroupedRunsTest(testing_utils.GinTestCase):
    """A tiny crVAE: the same numbers with one step per call and with four; the guard sees the offending step."""

    def setUp(self):
        super().setUp()
        self.mnist = testing_utils.write_fake_mnist(os.path.join(self.get_temp_dir(), "mnist.npz"))

    # The plain float32 tiny crVAE with four steps per call: the reference of three tests, trained once per process.
    _plain_four = None

    def _plain_four_run(self):
        if GroupedRunsTest._plain_four is None:
            GroupedRunsTest._plain_four = self._train("four", 4)
        return GroupedRunsTest._plain_four

    def _train(self, name, steps_per_execution, recipe="mnist_crvae.gin", extra=()):
        gin.clear_config()
        bindings = testing_utils.TINY_BINDINGS + testing_utils.tiny_head_bindings(
            "fc" if recipe == "mnist_vae.gin" else "channel_recurrent"
        )
        bindings += [
            f"dataset.local_path = '{self.mnist}'",
            "dataset.validation_size = 40",
            "train.max_steps = 10",
            "train.log_every_steps = 6",
            "train.image_every_steps = 100",
            "train.checkpoint_every_steps = 100",
            "train.checkpoint_every_secs = None",
            "train.validation_every_steps = 100",
            f"train.steps_per_execution = {steps_per_execution!r}",
            *extra,
        ]
        runs.parse_gin([os.path.join(testing_utils.GIN_DIR, recipe)], bindings, finalize=False)
        sizes = []
        original = execution.run_and_check

        def recording(execute, iterator, steps, guard, first_step):
            result = original(execute, iterator, steps, guard, first_step)
            sizes.append(result[0])
            return result

        model_dir = os.path.join(self.get_temp_dir(), name)
        with mock.patch.object(execution, "run_and_check", recording):
            return loop.train(model_dir), sizes, model_dir

    def test_four_steps_per_call_give_the_numbers_of_one(self):
        one, sizes_one, _ = self._train("one", 1)
        four, sizes_four, _ = self._plain_four_run()
        self.assertEqual(sizes_one, [1] * 10)
        self.assertEqual(sizes_four, [4, 1, 1, 3, 1])  # steps 6 and 10 logged (alone); the run ends at 10
        self.assertAllClose(four["train"], one["train"], rtol=1e-6, atol=1e-6)
        self.assertAllClose(four["validation"], one["validation"], rtol=1e-6, atol=1e-6)
        for a, b in zip(four["model"].weights, one["model"].weights):
            self.assertAllClose(a, b, rtol=1e-6, atol=1e-6, msg=a.path)

    def test_logged_steps_record_the_diagnostics_of_the_logged_step_only(self):
        def run(name, diagnostics, log_every):
            return self._train(
                name,
                4,
                extra=[f"train.diagnostics = '{diagnostics}'", f"train.log_every_steps = {log_every}"],
            )

        logged, sizes, _ = run("logged", "logged_steps", 5)
        every, _, _ = run("every", "every_step", 5)
        single, _, _ = run("single", "every_step", 1)  # every step logged: step 10's own values
        self.assertEqual(sizes, [4, 1, 4, 1])
        diagnostics = [k for k in logged["train"] if k.startswith(("grad_norm_", "param_norm_", "update_ratio_"))]
        self.assertLen(diagnostics, 9)  # three kinds x encoder / latent_head / decoder
        for key in diagnostics:
            self.assertGreater(logged["train"][key], 0.0, msg=key)
            self.assertAllClose(logged["train"][key], single["train"][key], rtol=1e-5, msg=key)
        # 'every_step' logs the mean over steps 6..10, which differs; the training itself does not.
        self.assertNotAllClose(every["train"]["grad_norm_decoder"], logged["train"]["grad_norm_decoder"])
        for a, b in zip(logged["model"].weights, every["model"].weights):
            self.assertAllClose(a, b, rtol=1e-6, atol=1e-6, msg=a.path)

    def test_the_guard_sees_the_non_finite_step_and_its_batch(self):
        original = models.VAE.train_step

        def poisoned(model, data):
            logs = dict(original(model, data))
            bad = model.group_optimizers["decoder"].iterations >= 3
            logs["loss"] = tf.where(bad, tf.constant(np.nan, tf.float32), tf.cast(logs["loss"], tf.float32))
            return logs

        saved = {}
        for spe in (1, 8):
            with mock.patch.object(models.VAE, "train_step", poisoned):
                with self.assertRaisesRegex(monitors.NonFiniteLossError, r"step 3 .*nonfinite_batch-00000003"):
                    self._train(f"nan{spe}", spe, recipe="mnist_vae.gin")
            saved[spe] = np.load(os.path.join(self.get_temp_dir(), f"nan{spe}", "nonfinite_batch-00000003.npy"))
        self.assertAllEqual(saved[8], saved[1])

    def test_an_xla_compiled_step_runs_inside_the_loop(self):
        one, _, _ = self._train("xla1", 1, recipe="mnist_vae.gin", extra=["train.jit_compile = True"])
        four, sizes, _ = self._train("xla4", 4, recipe="mnist_vae.gin", extra=["train.jit_compile = True"])
        plain, _, _ = self._train("plain", 4, recipe="mnist_vae.gin")
        self.assertEqual(sizes, [4, 1, 1, 3, 1])
        self.assertAllClose(four["train"], one["train"], rtol=1e-5, atol=1e-5)
        for a, b in zip(four["model"].weights, one["model"].weights):
            self.assertAllClose(a, b, rtol=1e-5, atol=1e-5, msg=a.path)
        # XLA's kernels round differently from the graph's: after 10 steps the runs agree to within a percent.
        self.assertAllClose(four["train"]["loss"], plain["train"]["loss"], rtol=1e-2)

    def test_the_default_xla_lstms_train_like_the_plain_graph(self):
        """The crVAE recipes' default `latent_head.lstm_jit_compile='auto'` (XLA LSTMs in float32 training), inside
        multi-step calls: the same run as the plain graph up to float32 rounding; evaluation never compiles."""
        xla, sizes, _ = self._train("xla_lstm", 4, extra=["latent_head.lstm_jit_compile = 'auto'"])
        plain, _, _ = self._plain_four_run()  # tiny_head_bindings: lstm_jit_compile = False
        self.assertEqual(sizes, [4, 1, 1, 3, 1])
        head = xla["model"].latent_head
        for lstm in (head.inference_lstm, head.generation_lstm):
            self.assertTrue(lstm.compiles(True))
            self.assertFalse(lstm.compiles(False))
            self.assertIn(lstm, blocks._COMPILED_STACKS)  # the training steps ran the XLA stack
        self.assertFalse(plain["model"].latent_head.inference_lstm.compiles(True))
        self.assertNotIn(plain["model"].latent_head.inference_lstm, blocks._COMPILED_STACKS)
        # XLA rounds differently; Adam's early, nearly sign-like updates carry that into the weights: after 10 steps
        # the losses agree to 1e-3 (measured 3e-4). A wrong XLA stack would be off by far more.
        self.assertAllClose(xla["train"]["loss"], plain["train"]["loss"], rtol=1e-3)
        self.assertAllClose(xla["validation"], plain["validation"], rtol=1e-3, atol=1e-3)

    def test_mixed_precision_lstms_train_in_fused_cells(self):
        """Under `model.precision='mixed_bfloat16'` the default 'auto' runs the LSTMs' training passes as XLA cells
        (`blocks.fused_lstm_recurrence`: oneDNN matmuls, float32 cell state), inside multi-step calls; the run
        follows the plain float32 run to bfloat16 rounding (measured: losses within 3e-5 after 10 steps)."""
        precision = "model.precision = 'mixed_bfloat16'"
        # Spies on the compiled cells (each traced step calls them once per time step and layer); a tracing count
        # would not do: an earlier test in the same process may have traced the same shapes already.
        with (
            mock.patch.object(blocks, "_lstm_cell_forward", wraps=blocks._lstm_cell_forward) as forward,
            mock.patch.object(blocks, "_lstm_cell_backward", wraps=blocks._lstm_cell_backward) as backward,
        ):
            fused, sizes, _ = self._train("cells", 4, extra=[precision, "latent_head.lstm_jit_compile = 'auto'"])
        plain, _, _ = self._plain_four_run()
        self.assertEqual(sizes, [4, 1, 1, 3, 1])
        self.assertEqual(fused["model"].latent_head.inference_lstm.compute_dtype, "bfloat16")
        for lstm in (fused["model"].latent_head.inference_lstm, fused["model"].latent_head.generation_lstm):
            self.assertEqual(lstm.xla_mode(True), "cells")
            self.assertNotIn(lstm, blocks._COMPILED_STACKS)
        self.assertGreater(forward.call_count, 0)  # the training steps ran the compiled cells, forward and backward
        self.assertGreater(backward.call_count, 0)
        self.assertAllClose(fused["train"]["loss"], plain["train"]["loss"], rtol=2e-3)
        self.assertAllClose(fused["validation"], plain["validation"], rtol=2e-2, atol=2e-2)

    def test_multi_worker_takes_one_step_per_call_only(self):
        with self.assertRaisesRegex(ValueError, "train.diagnostics must be 'logged_steps' or 'every_step'"):
            builders.train_settings(max_steps=5, diagnostics="sometimes")
        with self.assertRaisesRegex(ValueError, "not supported with train.distribution='multi_worker'"):
            builders.train_settings(max_steps=5, distribution="multi_worker", steps_per_execution=4)
        settings = builders.train_settings(max_steps=5, distribution="multi_worker")
        self.assertEqual(settings.steps_per_execution, "auto")


if __name__ == "__main__":
    tf.test.main()
