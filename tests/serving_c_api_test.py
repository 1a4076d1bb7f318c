"""The export served by TensorFlow's C API: the C++ SavedModel loader TF Serving is built on, without Python.

`tests/c_api/serve_saved_model.c` is compiled here with the system gcc against the headers and the shared
libraries of the installed TensorFlow wheel (`libtensorflow_cc.so.2` + `libtensorflow_framework.so.2`, found at
run time through the rpath). That program calls `TF_LoadSessionFromSavedModel` (tag "serve") on a tiny exported
crVAE and `TF_SessionRun` (`sample`, `complete`, `traverse` and invalid requests) on the graph tensors named by
the SavedModel's SignatureDefs, in a process that has no Python interpreter and a scrubbed environment; the
outputs come back as raw files and are compared with `tf.saved_model.load` of the same folder in this (Python)
process.

What passing proves: the SavedModel loads through C++ `LoadSavedModel` (variables restored from the checkpoint,
init op run), every op of the served signatures has a kernel registered in the C++ runtime, the SignatureDef
tensor names resolve in the loaded graph, the results equal the Python loader's, and the in-graph input checks
reach a non-Python client as INVALID_ARGUMENT with their text. What it does not prove: anything about the model
server's own code (version policy, directory polling, request batching, the REST codec, model config).

Skipped, with the reason, only where gcc or the wheel's C headers are missing; a failed compile is a failure.
"""

import os
import shutil
import subprocess
import tempfile
import unittest

import numpy as np
import serving_testing
import tensorflow as tf

import testing_utils

SOURCE = os.path.join(testing_utils.REPO, "tests", "c_api", "serve_saved_model.c")
TF_CODE_INVALID_ARGUMENT = 3
DTYPE_NAMES = {np.float32: "float32", np.int32: "int32", np.int64: "int64"}
SAMPLE_NUM, SAMPLE_SEED = 3, 7
COMPLETION_STEPS = 5


def compile_program(output: str) -> str:
    """Compiles SOURCE against the TF wheel (gold linker when present: the default one takes ~7 s on the 1 GB
    libtensorflow_cc); returns the executable's path. Raises unittest.SkipTest when gcc or the headers are missing."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise unittest.SkipTest("no gcc on PATH: the C API serving check compiles a C program with the system gcc")
    include, lib = tf.sysconfig.get_include(), tf.sysconfig.get_lib()
    if not os.path.isfile(os.path.join(include, "tensorflow", "c", "c_api.h")):
        raise unittest.SkipTest(f"the TensorFlow wheel ships no C headers under {include} (tensorflow/c/c_api.h)")
    command = [gcc, "-std=c11", "-O1", "-Wall", "-Wextra", f"-I{include}", SOURCE, "-o", output, f"-L{lib}"]
    command += ["-l:libtensorflow_cc.so.2", "-l:libtensorflow_framework.so.2", f"-Wl,-rpath,{lib}"]
    if shutil.which("ld.gold"):
        command.append("-fuse-ld=gold")
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode:
        raise AssertionError(f"gcc failed (exit {result.returncode}):\n{' '.join(command)}\n{result.stderr[-4000:]}")
    return output


def run_program(executable, saved_model_dir, requests, folder):
    """Runs the C program once on `requests` (a list of (signature, {input name: array})); returns one dict per
    request: {'ok': True, 'outputs': {name: array}} or {'ok': False, 'code': TF_Code, 'message': str}.

    The feeds and fetches are the SignatureDef's tensor names and dtypes; the process gets a scrubbed environment
    (no PYTHON* variables, no LD_LIBRARY_PATH: the libraries come from the rpath) and no GPU."""
    defs = serving_testing.signature_defs(saved_model_dir)
    args, fetched = [], []
    for index, (signature, inputs) in enumerate(requests):
        spec = defs[signature]
        if set(inputs) != set(spec.inputs):
            raise ValueError(f"{signature} takes {sorted(spec.inputs)}, got {sorted(inputs)}")
        for name, value in sorted(inputs.items()):
            dtype = serving_testing.NUMPY_DTYPES[spec.inputs[name].dtype]
            value = np.asarray(value, dtype)  # (np.ascontiguousarray would make a scalar [1])
            path = os.path.join(folder, f"in-{index}-{name}.bin")
            value.tofile(path)
            args += ["feed", spec.inputs[name].name, DTYPE_NAMES[dtype], str(value.ndim)]
            args += [str(d) for d in value.shape] + [path]
        outputs = {}
        for name in sorted(spec.outputs):
            path = os.path.join(folder, f"out-{index}-{name}.bin")
            args += ["fetch", spec.outputs[name].name, path]
            outputs[spec.outputs[name].name] = (name, path)
        fetched.append(outputs)
        args.append("run")
    env = {"PATH": "/usr/bin:/bin", "HOME": folder, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [executable, saved_model_dir, *args], capture_output=True, text=True, env=env, cwd=folder, timeout=300
    )
    if result.returncode:
        raise AssertionError(f"the C program failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    results, current = [], None
    for line in result.stdout.splitlines():
        words = line.split(" ")
        if words[0] == "RUN" and words[2] == "OK":
            current = {"ok": True, "outputs": {}}
            results.append(current)
        elif words[0] == "RUN":
            results.append({"ok": False, "code": int(words[3]), "message": " ".join(words[4:])})
        elif words[0] == "FETCH":
            name, path = fetched[len(results) - 1][words[1]]
            dtype = serving_testing.NUMPY_DTYPES[int(words[2])]
            current["outputs"][name] = np.fromfile(path, dtype).reshape([int(d) for d in words[3:]])
    if len(results) != len(requests):
        raise AssertionError(f"expected {len(requests)} RUN lines, got:\n{result.stdout}\n{result.stderr[-2000:]}")
    return results


class ServingCApiTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp(prefix="serving_c_api_test-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.executable = compile_program(os.path.join(cls.tmp, "serve_saved_model"))
        cls.model = serving_testing.tiny_model()
        cls.export = serving_testing.export_tiny(os.path.join(cls.tmp, "export"), cls.model)
        d = cls.model.latent_dim
        rng = np.random.default_rng(0)
        images = rng.uniform(0.0, 1.0, (2, 28, 28, 1)).astype(np.float32)
        mask = np.ones((2, 28, 28, 1), np.float32)
        mask[:, :, 14:] = 0.0  # the right half is missing
        cls.requests = {
            "sample": ("sample", {"num": np.int32(SAMPLE_NUM), "seed": np.int64(SAMPLE_SEED)}),
            "complete": (
                "complete",
                {"images": images, "mask": mask, "steps": np.int32(COMPLETION_STEPS), "seed": np.int64(-1)},
            ),
            "traverse": (
                "traverse",
                {
                    "z": rng.standard_normal((2, d)).astype(np.float32),
                    "time_step": np.int32(3),
                    "num_points": np.int32(4),
                    "seed": np.int64(SAMPLE_SEED),
                },
            ),
            "steps_range": (
                "complete",
                {"images": images, "mask": mask, "steps": np.int32(-1), "seed": np.int64(-1)},
            ),
            "num_zero": ("sample", {"num": np.int32(0), "seed": np.int64(SAMPLE_SEED)}),
            "z_width": ("serving_default", {"z": np.zeros([2, d - 1], np.float32)}),
            "num_rank": ("sample", {"num": np.array([2], np.int32), "seed": np.int64(SAMPLE_SEED)}),
        }
        names = list(cls.requests)
        results = run_program(cls.executable, cls.export.path, [cls.requests[n] for n in names], cls.tmp)
        cls.c_results = dict(zip(names, results))
        cls.loaded = tf.saved_model.load(cls.export.path)

    def python_call(self, key):
        signature, inputs = self.requests[key]
        outputs = self.loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in outputs.items()}

    def test_the_program_runs_without_python(self):
        """The executable's dynamic-library closure is the TF wheel's C++ libraries and the C runtime: no
        libpython, so no Python interpreter (and no Python TensorFlow) was in the serving process."""
        libraries = subprocess.run(["ldd", self.executable], capture_output=True, text=True, check=True).stdout
        self.assertIn(os.path.join(tf.sysconfig.get_lib(), "libtensorflow_cc.so.2"), libraries)
        self.assertIn("libtensorflow_framework.so.2", libraries)
        self.assertNotIn("libpython", libraries)
        self.assertNotIn("not found", libraries)

    def test_sample_through_the_c_loader_equals_the_python_load(self):
        """`sample` (num=3, seed=7) run by TF_SessionRun gives byte-identical images and z to the Python load of
        the same SavedModel (same kernels, stateless philox seed), with the contract's shapes."""
        result = self.c_results["sample"]
        self.assertTrue(result["ok"], msg=result)
        expected = self.python_call("sample")
        self.assertEqual(set(result["outputs"]), {"images", "z"})
        self.assertEqual(result["outputs"]["images"].shape, (SAMPLE_NUM, 28, 28, 1))
        self.assertEqual(result["outputs"]["z"].shape, (SAMPLE_NUM, self.model.latent_dim))
        self.assertGreater(np.ptp(result["outputs"]["images"]), 0.0)  # a real decode, not a constant
        for name in ("images", "z"):
            self.assertEqual(result["outputs"][name].tobytes(), expected[name].tobytes(), msg=name)

    def test_complete_through_the_c_loader_matches_the_python_load(self):
        """`complete` (a tf.while_loop of Adam steps with the generator's gradient inside, core ops only) runs under
        TF_SessionRun and matches the Python load to float rounding (the two runtimes may fuse ops differently);
        the observed pixels are the input's exactly and z moved from the posterior mean of the occluded input."""
        result = self.c_results["complete"]
        self.assertTrue(result["ok"], msg=result)
        expected = self.python_call("complete")
        self.assertEqual(result["outputs"]["images"].shape, (2, 28, 28, 1))
        self.assertEqual(result["outputs"]["z"].shape, (2, self.model.latent_dim))
        for name in ("images", "z"):
            self.assertAllClose(result["outputs"][name], expected[name], atol=1e-5, rtol=1e-5, msg=name)
        _, inputs = self.requests["complete"]
        observed = inputs["mask"] == 1.0
        np.testing.assert_array_equal(result["outputs"]["images"][observed], inputs["images"][observed])
        start = self.loaded.signatures["complete"](
            **{k: tf.constant(v) for k, v in {**inputs, "steps": np.int32(0)}.items()}
        )["z"].numpy()
        self.assertGreater(np.abs(result["outputs"]["z"] - start).max(), 1e-4)

    def test_traverse_through_the_c_loader_equals_the_python_load(self):
        """`traverse` under TF_SessionRun: the latent paths are byte-identical to the Python load's (stateless
        z~_t) and the decoded images equal to float rounding."""
        result = self.c_results["traverse"]
        self.assertTrue(result["ok"], msg=result)
        expected = self.python_call("traverse")
        self.assertEqual(result["outputs"]["images"].shape, (2, 4, 28, 28, 1))
        self.assertEqual(result["outputs"]["z"].tobytes(), expected["z"].tobytes())
        self.assertAllClose(result["outputs"]["images"], expected["images"], atol=1e-6, rtol=0)

    def test_in_graph_checks_reach_a_c_client(self):
        """Invalid requests fed straight into the graph by the C API (no TensorSpec check on that path) fail with
        INVALID_ARGUMENT and the in-graph message naming what was expected."""
        d = self.model.latent_dim
        for key, text in (
            ("num_zero", "num must be an int32 scalar in [1, "),
            ("z_width", f"z must be [batch, {d}] float32 with batch >= 1; got shape] [2 {d - 1}]"),
            ("num_rank", "[1] is not compatible with expected shape []"),
            ("steps_range", "steps must be an int32 scalar in [0, "),
        ):
            with self.subTest(request=key):
                result = self.c_results[key]
                self.assertFalse(result["ok"], msg=result)
                self.assertEqual(result["code"], TF_CODE_INVALID_ARGUMENT, msg=result)
                self.assertIn(text, result["message"])


if __name__ == "__main__":
    tf.test.main()
