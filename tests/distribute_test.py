"""Training under tf.distribute on a 2-core CPU (issue #13): MirroredStrategy over two logical CPUs matches one
device at the same global batch, for the VAE family and the crVAE-GAN; MultiWorkerMirroredStrategy with two local
workers trains, is killed, restarts and resumes.

Each check runs in a subprocess (`distributed_run.py`): logical devices and the multi-worker runtime must be set up
before TensorFlow's first op, which pytest's process has long done.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np

import testing_utils

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(HERE, "distributed_run.py")

# Tolerances of the 2-replica vs 1-replica comparison after 2 steps (float32): a loss within LOSS_RTOL (measured:
# 1e-7 for the crVAE on IWAE-3, 9e-7 for the crVAE-GAN), every variable within WEIGHT_ATOL + WEIGHT_RTOL x how far the
# one-device run moved it (measured: 4.3e-7 absolute at most, 2.5e-3 of the movement). Only the order of float32 sums
# differs (cross-replica sums, BatchNorm moments of all-reduced sums).
LOSS_RTOL = 2e-5
WEIGHT_ATOL = 1e-6
WEIGHT_RTOL = 1e-2


def _run(mode, spec, root, timeout):
    path = os.path.join(root, f"{mode}_spec.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.run(
        [sys.executable, RUNNER, mode, path], capture_output=True, text=True, timeout=timeout, env=env
    )
    if process.returncode:
        raise AssertionError(f"{mode} run failed ({process.returncode}):\n{process.stderr[-4000:]}")


class MirroredParityTest(testing_utils.GinTestCase):
    """One subprocess, two logical CPUs: the same model trained on one device and on two replicas."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        import tempfile

        cls.root = os.environ.get("DISTRIBUTE_TEST_ROOT") or tempfile.mkdtemp(prefix="distribute_test_")
        mnist = testing_utils.write_fake_mnist(os.path.join(cls.root, "mnist.npz"))
        faces = os.path.join(cls.root, "faces")
        testing_utils.write_faces(faces, 109, 89, range(1, 25))
        # Adam's epsilon = 1 keeps each step proportional to the gradient: with the recipes' 1e-8 the first steps
        # are lr * sign(g), which turns rounding noise in near-zero gradients (e.g. conv biases before BatchNorm,
        # analytically zero) into +-lr differences.
        common = testing_utils.TINY_BINDINGS + testing_utils.tiny_head_bindings("channel_recurrent")
        common += ["train.max_steps = 2", "optimizer.epsilon = 1.0", "latent_head.num_time_steps = 2"]
        # The VAE family trains the crVAE on the IWAE bound (k = 3: the [k, batch, latent] noise split by replica).
        vae = common + [
            f"dataset.local_path = '{mnist}'",
            "dataset.validation_size = 40",
            "model.num_importance_samples = 3",
            "model.kl_weight = 1.0",
        ]
        # Dropout masks are drawn per replica over each replica's own discriminator batch, whose rows are not the
        # one-device batch's in the same order: the comparison runs without dropout.
        faces_data = testing_utils.TINY_ADVERSARIAL_BINDINGS + [
            f"dataset.local_path = '{faces}'",
            f"dataset.cache_dir = '{os.path.join(cls.root, 'cache')}'",
            "dataset.validation_size = 4",
            "discriminator.dropout_rate = 0.0",
        ]
        # The crVAE-GAN with the mutual-information term (kappa > 0) and a skip threshold below the batch accuracy
        # (0.5 at the start): every discriminator step is skipped, on one device by tf.cond, under the strategy by
        # stepping and restoring (weights, Adam moments, iteration count), while the trunk still learns the MI term.
        gan = (
            common
            + faces_data
            + [
                "model.kl_step_weights = [3, 2]",
                "model.mutual_information_weight = 0.02",
                "model.mutual_information_step_weights = [0.1, 1.5]",
                "model.discriminator_accuracy_threshold = 0.3",
            ]
        )
        cls.outputs = {
            "vae": os.path.join(cls.root, "vae.npz"),
            "crvae_gan": os.path.join(cls.root, "crvae_gan.npz"),
            "replicas": os.path.join(cls.root, "replicas.npz"),
        }
        spec = {
            "replica_checks": cls.outputs["replicas"],
            "cases": [
                {
                    "gin_files": [os.path.join(testing_utils.GIN_DIR, "mnist_crvae.gin")],
                    "bindings": vae,
                    "steps": 2,
                    "out": cls.outputs["vae"],
                },
                {
                    "gin_files": [os.path.join(testing_utils.GIN_DIR, "celeba64.gin")],
                    "bindings": gan,
                    "steps": 2,
                    "out": cls.outputs["crvae_gan"],
                },
            ],
        }
        _run("parity", spec, cls.root, timeout=600)

    @classmethod
    def tearDownClass(cls):
        if not os.environ.get("DISTRIBUTE_TEST_ROOT"):
            shutil.rmtree(cls.root, ignore_errors=True)
        super().tearDownClass()

    def _check_parity(self, name, keys):
        result = np.load(self.outputs[name])
        logs_one, logs_two = json.loads(str(result["logs_one"])), json.loads(str(result["logs_two"]))
        self.assertLen(logs_one, 2)
        for one, two in zip(logs_one, logs_two):
            for key in keys:
                self.assertAllClose(two[key], one[key], rtol=LOSS_RTOL, atol=0, msg=f"{name} {key}")
        names = [str(n) for n in result["names"]]
        self.assertEqual(names, [str(n) for n in result["names_two"]])
        moved = 0
        for i, variable in enumerate(names):
            one, two, initial = result[f"one_{i}"], result[f"two_{i}"], result[f"init_{i}"]
            if not np.issubdtype(one.dtype, np.floating):
                self.assertAllEqual(two, one, msg=f"{name} {variable}")
                continue
            movement = float(np.max(np.abs(one - initial)))
            self.assertLessEqual(
                float(np.max(np.abs(two - one))), WEIGHT_ATOL + WEIGHT_RTOL * movement, msg=f"{name} {variable}"
            )
            moved += movement > 1e-5
        self.assertGreater(moved, 10)  # the steps did move the weights
        return logs_one, logs_two

    def test_vae_family_iwae_two_replicas_match_one_device(self):
        self._check_parity("vae", ["loss", "distortion", "rate", "elbo"])

    def test_crvae_gan_two_replicas_match_one_device(self):
        logs_one, logs_two = self._check_parity(
            "crvae_gan",
            ["loss", "reconstruction", "rate", "discriminator_loss", "generator_adversarial", "mutual_information"],
        )
        for one, two in zip(logs_one, logs_two):  # the skip rule saw the same, all-reduced accuracy
            self.assertEqual(two["discriminator_batch_accuracy"], one["discriminator_batch_accuracy"])
            self.assertEqual(one["discriminator_skip_rate"], 1.0)
            self.assertEqual(two["discriminator_skip_rate"], 1.0)
        result = np.load(self.outputs["crvae_gan"])
        names = [str(n) for n in result["names"]]
        head = [i for i, n in enumerate(names) if n.startswith("discriminator/")]
        trunk = [i for i, n in enumerate(names) if n.startswith("discriminator_trunk/") and "kernel" in n]
        self.assertNotEmpty(head)
        self.assertNotEmpty(trunk)
        for i in head:  # an exact skip: the head is where it started, on both
            self.assertAllEqual(result[f"two_{i}"], result[f"init_{i}"], msg=names[i])
            self.assertAllEqual(result[f"one_{i}"], result[f"init_{i}"], msg=names[i])
        for i in trunk:  # the trunk learned the MI term
            self.assertGreater(np.max(np.abs(result[f"two_{i}"] - result[f"init_{i}"])), 0, msg=names[i])

    def test_replica_noise_is_the_global_draw_split_by_replica(self):
        result = np.load(self.outputs["replicas"])
        # Replica r holds rows [4r, 4r + 4) of the one-device draw of the global batch: different across replicas,
        # reproducible from the seed and the replica id.
        self.assertAllEqual(result["noise_False"], result["noise_global"][:8])
        self.assertAllEqual(result["noise_True"], result["noise_global"][8:])
        self.assertGreater(np.max(np.abs(result["noise_False"][:4] - result["noise_False"][4:])), 0.1)

    def test_minibatch_discrimination_per_replica_or_global(self):
        result = np.load(self.outputs["replicas"])
        # Not synchronized: each replica compares its 4 rows with each other only (= the layer on each half).
        self.assertAllClose(result["mbd_False"], result["mbd_halves"], atol=1e-6)
        # Synchronized: every row is compared with all 8 (= the layer on the whole batch), which differs.
        self.assertAllClose(result["mbd_True"], result["mbd_global"], atol=1e-6)
        self.assertGreater(np.max(np.abs(result["mbd_global"] - result["mbd_halves"])), 1e-3)


def _free_ports(count):
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class MultiWorkerTest(testing_utils.GinTestCase):
    """Two worker processes on 127.0.0.1 (MultiWorkerMirroredStrategy, ring all-reduce on CPU) train the crVAE with its
    XLA-compiled LSTMs, are both killed (SIGKILL) after the chief's first checkpoint, restart with the same config and
    resume from it."""

    TIMEOUT = 300  # per sitting, for both workers

    def _start_workers(self, root, bindings, sitting):
        import time

        ports = _free_ports(2)
        cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
        processes = []
        for index in range(2):
            out = os.path.join(root, f"worker{index}-{sitting}.npz")
            spec = {
                "gin_files": [os.path.join(testing_utils.GIN_DIR, "mnist_crvae.gin")],
                "bindings": bindings,
                "model_dir": self.model_dir,
                "out": out,
            }
            path = os.path.join(root, f"worker{index}-{sitting}.json")
            with open(path, "w") as f:
                json.dump(spec, f)
            env = dict(
                os.environ,
                CUDA_VISIBLE_DEVICES="",
                TF_CPP_MIN_LOG_LEVEL="2",
                TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
                TMPDIR=root,  # worker 1's scratch folder (a killed worker leaves it behind)
            )
            log = open(os.path.join(root, f"worker{index}-{sitting}.log"), "w")
            processes.append(
                (subprocess.Popen([sys.executable, RUNNER, "train", path], stdout=log, stderr=log, env=env), out, log)
            )
        self.addCleanup(lambda: [p.kill() for p, _, _ in processes if p.poll() is None])
        return processes, time.time()

    def _log(self, root, index, sitting):
        with open(os.path.join(root, f"worker{index}-{sitting}.log")) as f:
            return f.read()[-3000:]

    def test_two_workers_train_are_killed_and_resume(self):
        import signal
        import time

        root = os.path.join(os.environ.get("DISTRIBUTE_TEST_ROOT") or self.get_temp_dir(), "multi_worker")
        os.makedirs(root, exist_ok=True)
        self.model_dir = os.path.join(root, "run")
        mnist = testing_utils.write_fake_mnist(os.path.join(root, "mnist.npz"), num_train=120, num_test=10)
        # The crVAE with its default XLA LSTMs ('auto': the whole stack compiled in float32 training) under
        # MultiWorkerMirroredStrategy.
        bindings = (
            testing_utils.TINY_BINDINGS
            + testing_utils.tiny_head_bindings("channel_recurrent")
            + [
                "latent_head.lstm_jit_compile = 'auto'",
                f"dataset.local_path = '{mnist}'",
                "dataset.validation_size = 40",
                "train.distribution = 'multi_worker'",
                "train.num_validation_images = 4",
                "train.num_image_samples = 2",
                "train.checkpoint_every_steps = 1",
                "model.num_validation_samples = 2",
                "train.image_every_steps = 1000",
                "train.validation_every_steps = 1000",
            ]
        )
        # Sitting 1: far more steps than it will live; both workers are killed once the chief's first checkpoint is
        # on disk.
        processes, start = self._start_workers(root, bindings + ["train.max_steps = 1000"], 1)
        index_file = os.path.join(self.model_dir, "checkpoints", "checkpoint")
        while not os.path.exists(index_file):
            for index, (process, _, _) in enumerate(processes):
                self.assertIsNone(process.poll(), f"worker {index} exited early:\n{self._log(root, index, 1)}")
            self.assertLess(time.time() - start, self.TIMEOUT, "no checkpoint written in time")
            time.sleep(0.5)
        for process, _, log in processes:
            process.send_signal(signal.SIGKILL)
            process.wait()
            log.close()
        killed_at = int(open(index_file).read().split('"')[1].rsplit("-", 1)[1])
        self.assertGreaterEqual(killed_at, 1)

        # Sitting 2: the same config (max_steps is resume-safe), both workers resume from the chief's checkpoint.
        final = killed_at + 1
        processes, start = self._start_workers(root, bindings + [f"train.max_steps = {final}"], 2)
        for index, (process, _, log) in enumerate(processes):
            try:
                process.wait(timeout=max(1, self.TIMEOUT - (time.time() - start)))
            finally:
                log.close()
            self.assertEqual(process.returncode, 0, self._log(root, index, 2))
        results = [np.load(out) for _, out, _ in processes]
        for result in results:
            self.assertEqual(int(result["initial_step"]), killed_at)
            self.assertEqual(int(result["step"]), final)
            self.assertEqual(int(result["xla_lstms"]), 2)  # both LSTMs trained as XLA stacks on every worker
        names = [str(n) for n in results[0]["names"]]
        for i, name in enumerate(names):  # the workers stayed in sync
            self.assertAllEqual(results[1][f"w{i}"], results[0][f"w{i}"], msg=name)
        # Only the chief wrote: one TensorBoard event file per sitting, checkpoints at its steps.
        events = os.listdir(os.path.join(self.model_dir, "tb", "train"))
        self.assertLen([e for e in events if e.startswith("events.out")], 2)
        self.assertIn(f"ckpt-{final}.index", os.listdir(os.path.join(self.model_dir, "checkpoints")))
        for index in range(2):
            with open(os.path.join(root, f"worker{index}-2.log")) as f:
                self.assertIn(f"Resuming from step {killed_at}", f.read())


class ShardTest(testing_utils.GinTestCase):
    def test_worker_shards_are_row_blocks_of_the_global_batch(self):
        from crvae_tf import data

        images = np.random.default_rng(0).uniform(size=(24, 6, 6, 1)).astype(np.float32)
        kwargs = dict(batch_size=8, binarization="dynamic", seed=3, training=True, epoch=1, skip_batches=1, flip=True)
        full = list(data.make_dataset(images, **kwargs))
        shards = [list(data.make_dataset(images, shard=(w, 2), **kwargs)) for w in range(2)]
        self.assertLen(full, 2)  # 3 batches per epoch, one skipped: a resumed worker continues the same order
        for index, batch in enumerate(full):
            self.assertAllEqual(np.concatenate([shards[0][index], shards[1][index]]), batch)
        with self.assertRaisesRegex(ValueError, "multiple of the number of workers"):
            data.make_dataset(images, shard=(0, 3), **kwargs)
