"""One gin surface: the model code is gin-free and absl-flag-free; only builders, libraries and binaries use gin."""

import ast
import os
import unittest

import testing_utils

PACKAGE = os.path.join(testing_utils.REPO, "crvae_tf")
# Modules that must be importable in a notebook or a serving job without gin or absl flags.
GIN_FREE = (
    "layers",
    "networks",
    "models",
    "adversarial",
    "bounds",
    "distributions",
    "data",
    "image_data",
    "artifacts",
    "empirical_prior",
)
# Binaries: the only modules that may define absl flags.
BINARIES = ("train", "bench", "evaluate", "export", "explore")


def imported_modules(module):
    with open(os.path.join(PACKAGE, f"{module}.py")) as f:
        tree = ast.parse(f.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


class ImportRulesTest(unittest.TestCase):
    def test_model_code_is_gin_free(self):
        for module in GIN_FREE:
            with self.subTest(module=module):
                imports = imported_modules(module)
                self.assertFalse(
                    {name for name in imports if name == "gin" or name.startswith("gin.")},
                    msg=f"crvae_tf/{module}.py imports gin",
                )

    def test_only_binaries_define_flags(self):
        for filename in sorted(os.listdir(PACKAGE)):
            module, extension = os.path.splitext(filename)
            if extension != ".py" or module in BINARIES:
                continue
            with self.subTest(module=module):
                self.assertNotIn("absl.flags", imported_modules(module))
