"""Table 2's path end to end on generated STL-10 files (issue #15): the reader -> training the semi-supervised VAE-GAN
recipe (shrunk) on fold 0 -> per-fold evaluation with checkpoint selection on validation accuracy (fold 0 through
`python -m crvae_tf.evaluate --metrics=classification`, fold 1 through `python -m crvae_tf.classify`) -> the Table 2
line (mean and std over the folds). Fold 1's run reuses fold 0's weights under fold 1's config, so the test trains
once."""

import json
import os
import shutil

import gin
import numpy as np
import stl10_testing

from crvae_tf import classify
from crvae_tf import evaluate
from crvae_tf import runs
from crvae_tf.evaluation import classification
from crvae_tf.training import loop

import testing_utils

RECIPE = os.path.join(testing_utils.GIN_DIR, "stl10_vae_gan.gin")


class Table2PathTest(testing_utils.GinTestCase):
    def test_reader_training_per_fold_evaluation_and_table_line(self):
        root = self.get_temp_dir()
        folder = stl10_testing.write_colour_folder(os.path.join(root, "stl10_binary"), fold_size=10)
        model_dir = os.path.join(root, "fold0")
        bindings = (
            testing_utils.TINY_BINDINGS
            + testing_utils.tiny_head_bindings("fc")
            + testing_utils.TINY_ADVERSARIAL_BINDINGS
            + [
                f"dataset.local_path = '{folder}'",
                "dataset.fold = 0",
                "dataset.resolution = 64",
                "dataset.labeled_batch_size = 4",
                "train.max_steps = 2",
                "train.checkpoint_every_steps = 1",
                "train.validation_every_steps = 2",
                "train.image_every_steps = 1000",
            ]
        )
        runs.parse_gin([RECIPE], bindings)
        try:
            result = loop.train(model_dir)
        finally:
            gin.clear_config()
        self.assertIn("classification_accuracy", result["train"])
        # Fold 1's run: fold 0's weights under fold 1's config (its own labeled fold, validation split and file
        # names), so the test trains once; the evaluation and the table treat it as any run of fold 1.
        model_dirs = [model_dir, os.path.join(root, "fold1")]
        shutil.copytree(model_dir, model_dirs[1])
        for name in ("config.gin", "operative_config.gin"):
            path = os.path.join(model_dirs[1], name)
            with open(path) as f:
                text = f.read()
            self.assertIn("dataset.fold = 0", text)
            with open(path, "w") as f:
                f.write(text.replace("dataset.fold = 0", "dataset.fold = 1"))

        evaluated = json.loads(
            testing_utils.run_main(
                evaluate.main, ["evaluate", f"--model_dir={model_dirs[0]}", "--metrics=classification"]
            ).splitlines()[-1]
        )
        self.assertEqual((evaluated["metric"], evaluated["fold"]), ("classification", 0))
        argv = ["classify", f"--model_dirs={','.join(model_dirs)}", "--name=Standard VAE", "--batch_size=16"]
        output = testing_utils.run_main(classify.main, argv).strip().splitlines()
        summary = json.loads(output[-1])
        per_fold = [classification.latest_result(d) for d in model_dirs]
        self.assertEqual(per_fold[0]["path"], evaluated["path"])  # classify reused evaluate's result
        self.assertEqual([r["fold"] for r in per_fold], [0, 1])
        for result in per_fold:
            self.assertTrue(os.path.basename(result["path"]).startswith(f"classification-fold{result['fold']}-step"))
            self.assertEqual(set(result["validation_by_step"]), {"1", "2"})  # both kept checkpoints compared
            self.assertEqual(result["validation_accuracy"], max(result["validation_by_step"].values()))
            self.assertEqual((result["num_test"], result["num_validation"]), (40, 50))
        accuracies = [r["test_accuracy"] for r in per_fold]
        self.assertAlmostEqual(summary["mean"], np.mean(accuracies))
        self.assertAlmostEqual(summary["std"], np.std(accuracies, ddof=1))
        self.assertEqual((summary["num_folds"], summary["paper"]), (2, 74.91))
        expected = f"| Standard VAE | 74.91 | {100 * summary['mean']:.2f} ± {100 * summary['std']:.2f} (2 folds) |"
        self.assertEqual(output[-2], expected)
        # A second call reuses the per-fold results; the same fold twice is refused.
        self.assertEqual(json.loads(testing_utils.run_main(classify.main, argv).strip().splitlines()[-1]), summary)
        with self.assertRaisesRegex(Exception, "appears twice"):
            testing_utils.run_main(classify.main, ["classify", f"--model_dirs={model_dirs[0]},{model_dirs[0]}"])
        with self.assertRaises(NotADirectoryError):
            testing_utils.run_main(classify.main, ["classify", f"--model_dirs={os.path.join(root, 'none')}"])


if __name__ == "__main__":
    import tensorflow as tf

    tf.test.main()
