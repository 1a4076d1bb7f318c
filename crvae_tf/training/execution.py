"""Several training steps per `tf.function` call (`train.steps_per_execution`), like Keras'
`steps_per_execution`, without giving up the loop's per-step guarantees. Gin-free.

One call runs n <= N steps in a `tf.while_loop` that reads the batches from the epoch's iterator inside the graph,
so the host waits once per call instead of once per step. What the loop sees is unchanged:

- a call never crosses a step at which a periodic task (summaries, validation, grids, checkpoints) is due, the end
  of an epoch or the end of the run (`ExecutionPlan.steps`): the tasks run at exactly the same steps, on the same
  logs, as with one step per call;
- a call ends early after a step the guard must look at (`stop_after`): a non-finite loss, or a discriminator
  batch accuracy of exactly 0 or 1. The guard (`monitors.TrainingGuard`) therefore checks every step that could
  stop the run, with that step's batch, which the call returns; the steps a call ran before its last were neither,
  which for the collapse count means "not pinned" (`run_and_check` replays that);
- the steps themselves, the data order and the noise are those of one step per call, so a run's numbers do not
  depend on N (tested), nor on how a resumed run groups its steps.

The cost: an interrupt (SIGINT / SIGTERM) is seen at the end of a call, so it takes up to N steps to act on.
'auto' (the default) therefore sizes N from the measured step time so that one call lasts about
`AUTO_SECONDS_PER_CALL` (capped at `AUTO_MAX_STEPS`): slow steps (a 1-second CPU step of the MNIST crVAE) run one
per call, where a host round trip is noise anyway, and fast ones (small models, accelerators) many.
"""

import time

import tensorflow as tf

AUTO_SECONDS_PER_CALL = 1.0
AUTO_MAX_STEPS = 100
GUARDED_LOSSES = ("loss", "discriminator_loss")
ACCURACY = "discriminator_batch_accuracy"


def stop_after(logs: dict) -> tf.Tensor:
    """True after a step the training guard must see: a non-finite `loss` / `discriminator_loss`, or a
    discriminator batch accuracy of exactly 0 or 1 (`monitors.TrainingGuard`)."""
    stop = tf.constant(False)
    for key in GUARDED_LOSSES:
        if key in logs:
            stop = tf.logical_or(stop, tf.logical_not(tf.math.is_finite(tf.cast(logs[key], tf.float32))))
    if ACCURACY in logs:
        accuracy = tf.cast(logs[ACCURACY], tf.float32)
        stop = tf.logical_or(stop, tf.logical_or(tf.equal(accuracy, 0.0), tf.equal(accuracy, 1.0)))
    return stop


def _zeros(spec):
    shape = [0 if d is None else d for d in spec.shape.as_list()]
    return tf.zeros(shape, spec.dtype)


def multi_step(step_fn, element_spec):
    """`execute(iterator, n) -> (steps_run, logs, batch)`: a `tf.function` running `step_fn(batch) -> logs` on up to
    n batches of `iterator` (n: an int32 scalar, >= 1; fewer only when `stop_after` fired), returning the number of
    steps it ran, the last step's logs and the last batch.

    `step_fn` is a `tf.function` (XLA-compiled or a replicated step: it is called, not re-traced, inside the loop).
    `element_spec`: the iterator's element spec (the batch structure). The first step's logs structure is read from
    `step_fn`'s concrete function, so the step is traced once.
    """
    batch_specs = tf.nest.flatten(element_spec)

    @tf.function(reduce_retracing=True, autograph=False)
    def execute(iterator, n):
        output_spec = step_fn.get_concrete_function(element_spec).structured_outputs
        logs0 = tf.nest.map_structure(lambda t: tf.zeros(t.shape, t.dtype), output_spec)
        batch0 = tf.nest.pack_sequence_as(element_spec, [_zeros(s) for s in batch_specs])

        def cond(i, logs, batch):
            return tf.logical_and(i < n, tf.logical_or(i == 0, tf.logical_not(stop_after(logs))))

        def body(i, logs, batch):
            batch = next(iterator)
            return i + 1, step_fn(batch), batch

        invariants = (
            tf.TensorShape([]),
            tf.nest.map_structure(lambda t: t.shape, logs0),
            tf.nest.pack_sequence_as(element_spec, [s.shape for s in batch_specs]),
        )
        return tf.while_loop(
            cond, body, (tf.constant(0), logs0, batch0), shape_invariants=invariants, parallel_iterations=1
        )

    return execute


def without_diagnostics(model):
    """`step(batch)`: `model.train_step` traced without the per-group training diagnostics
    (`model.record_diagnostics` is read when the step is traced), for the steps between logging points."""

    def step(batch):
        model.record_diagnostics = False
        try:
            return model.train_step(batch)
        finally:
            model.record_diagnostics = True

    return step


def step_between_logs(model, diagnostics: str):
    """The step function the loop runs between logging points under `train.diagnostics`: `model.train_step`
    ('every_step') or `without_diagnostics(model)` ('logged_steps'); not yet a `tf.function`."""
    return model.train_step if diagnostics == "every_step" else without_diagnostics(model)


class ExecutionPlan:
    """How many steps the next call runs: at most N ('auto': from the measured step time), never past a step at which
    one of `tasks` is due (`task.due(step)`), the end of the epoch or `max_steps`.

    With `recorded(step)` (the steps whose diagnostics are logged, `train.diagnostics='logged_steps'`), such a step
    runs alone in its call, with the step function that records them (`records`), and no other call reaches it.
    """

    def __init__(self, steps_per_execution, tasks, steps_per_epoch: int, max_steps: int, recorded=None):
        if not (steps_per_execution == "auto" or (type(steps_per_execution) is int and steps_per_execution >= 1)):
            raise ValueError(f"steps_per_execution must be 'auto' or an integer >= 1, got {steps_per_execution!r}")
        self.setting = steps_per_execution
        self.tasks, self.steps_per_epoch, self.max_steps = list(tasks), int(steps_per_epoch), int(max_steps)
        self.recorded = recorded
        self.auto_steps = 1
        self._calls = 0

    def limit(self) -> int:
        return self.auto_steps if self.setting == "auto" else self.setting

    def steps(self, step: int) -> int:
        """n >= 1 for the call that starts after `step`."""
        if self.records(step):
            return 1
        end = min(self.max_steps, (step // self.steps_per_epoch + 1) * self.steps_per_epoch, step + self.limit())
        n = 1
        while step + n < end and not any(task.due(step + n) for task in self.tasks) and not self.records(step + n):
            n += 1
        return n

    def records(self, step: int) -> bool:
        """Whether the call that starts after `step` is the one-step call of a step whose diagnostics are logged."""
        return self.recorded is not None and self.recorded(step + 1)

    def observe(self, steps: int, seconds: float) -> None:
        """Records a call's duration; 'auto' sizes the next calls from it (the first call, which traces, is not
        used)."""
        self._calls += 1
        if self.setting != "auto" or self._calls == 1 or steps < 1:
            return
        per_step = max(seconds / steps, 1e-6)
        self.auto_steps = int(min(AUTO_MAX_STEPS, max(1, round(AUTO_SECONDS_PER_CALL / per_step))))


def run_and_check(execute, iterator, steps: int, guard, first_step: int):
    """One call of `execute` for `steps` steps after `first_step`; then the guard on the last step (the collapse
    count reset first when the call ran more than one step: the earlier steps were not pinned). Returns
    (steps_run, logs, seconds)."""
    start = time.perf_counter()
    ran, logs, batch = execute(iterator, tf.constant(steps, tf.int32))
    ran = int(ran)  # the host's one wait per call
    seconds = time.perf_counter() - start
    if ran > 1:
        guard.collapse.reset()
    guard.check(first_step + ran, logs, batch)
    return ran, logs, seconds
