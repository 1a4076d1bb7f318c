"""The package's layering: no import cycle, no lower layer importing a higher one, gin only in the gin surface and
the binaries, absl flags only in the binaries (they read their own flags and hand `cli` what it needs)."""

import ast
import os
import unittest

import testing_utils

PACKAGE = os.path.join(testing_utils.REPO, "crvae_tf")

# Layer of each top-level module or subpackage; a module may import only from lower layers or from its own
# subpackage (within which the import graph must still be acyclic).
LAYERS = {
    "artifacts": 0,
    "locking": 0,
    "startup": 0,
    "objectives": 1,
    "architectures": 1,
    "data": 1,
    "models": 2,
    "builders": 3,
    "runs": 4,
    "training": 5,
    "evaluation": 5,
    "exploration": 5,
    "serving": 5,
    "cli": 6,
    "train": 7,
    "evaluate": 7,
    "export": 7,
    "explore": 7,
    "bench": 7,
}
# The one gin surface: the builders (every configurable) and the run-directory contract (it parses and writes a
# run's config); plus the binaries. Everything else is importable in a notebook or a serving job without gin.
GIN_ALLOWED = {"builders", "runs", "train", "evaluate", "export", "explore", "bench"}
BINARIES = {"train", "bench", "evaluate", "export", "explore"}
FLAG_MODULES = BINARIES


def modules():
    """Dotted names (relative to crvae_tf) of every module in the package."""
    out = []
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, name), PACKAGE)[:-3].replace(os.sep, ".")
                out.append(rel[: -len(".__init__")] if rel.endswith(".__init__") else rel)
    return sorted(m for m in out if m != "__init__")


def imports_of(module):
    """(crvae_tf-internal modules, external top-level names) imported by `module`."""
    path = os.path.join(PACKAGE, *module.split("."))
    path = os.path.join(path, "__init__.py") if os.path.isdir(path) else path + ".py"
    with open(path) as f:
        tree = ast.parse(f.read())
    internal, external = set(), set()
    known = set(modules())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                (internal if alias.name.startswith("crvae_tf.") else external).add(
                    alias.name[len("crvae_tf.") :] if alias.name.startswith("crvae_tf.") else alias.name
                )
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "crvae_tf" or node.module.startswith("crvae_tf."):
                base = node.module[len("crvae_tf.") :] if node.module != "crvae_tf" else ""
                for alias in node.names:
                    candidate = f"{base}.{alias.name}" if base else alias.name
                    internal.add(candidate if candidate in known else base)
            else:
                external.add(node.module)
                external.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {m for m in internal if m}, external


def layer(module):
    return LAYERS[module.split(".")[0]]


class ImportRulesTest(unittest.TestCase):
    def test_every_module_has_a_layer(self):
        for module in modules():
            self.assertIn(module.split(".")[0], LAYERS, msg=f"crvae_tf/{module} has no layer in LAYERS")

    def test_no_lower_layer_imports_a_higher_one(self):
        for module in modules():
            internal, _ = imports_of(module)
            for other in internal:
                with self.subTest(module=module, imports=other):
                    same_package = other.split(".")[0] == module.split(".")[0]
                    self.assertTrue(
                        same_package or layer(other) < layer(module),
                        msg=f"crvae_tf.{module} (layer {layer(module)}) imports crvae_tf.{other} "
                        f"(layer {layer(other)})",
                    )

    def test_no_import_cycle(self):
        graph = {m: {o for o in imports_of(m)[0] if o != m} for m in modules()}
        state = {}

        def visit(node, path):
            state[node] = "open"
            for nxt in graph.get(node, ()):
                if state.get(nxt) == "open":
                    self.fail("import cycle: " + " -> ".join(path + [node, nxt]))
                if nxt not in state:
                    visit(nxt, path + [node])
            state[node] = "done"

        for module in graph:
            if module not in state:
                visit(module, [])

    def test_gin_only_in_the_gin_surface_and_binaries(self):
        for module in modules():
            if module in GIN_ALLOWED:
                continue
            with self.subTest(module=module):
                _, external = imports_of(module)
                self.assertFalse({n for n in external if n == "gin" or n.startswith("gin.")}, msg=module)

    def test_only_binaries_define_flags(self):
        for module in modules():
            if module in FLAG_MODULES:
                continue
            with self.subTest(module=module):
                _, external = imports_of(module)
                self.assertNotIn("absl.flags", external)

    def test_the_layering_test_sees_a_violation(self):
        # A module of layer 1 importing the layer-4 runs module must be reported (the rule can fail).
        self.assertLess(layer("objectives.bounds"), layer("runs"))
        self.assertIn("objectives.bounds", imports_of("models.base")[0])


if __name__ == "__main__":
    unittest.main()
