"""The binaries' start (`crvae_tf.startup`): the BFC CPU allocator is chosen unless the user chose, and only before
TensorFlow is imported."""

import os
import sys
import unittest
from unittest import mock

from crvae_tf import startup


class BfcAllocatorTest(unittest.TestCase):
    def _without_tensorflow(self):
        modules = {name: module for name, module in sys.modules.items() if name != "tensorflow"}
        return mock.patch.dict(sys.modules, modules, clear=True)

    def test_chosen_before_tensorflow_is_imported(self):
        with mock.patch.dict(os.environ, {}, clear=True), self._without_tensorflow():
            startup.use_bfc_cpu_allocator()
            self.assertEqual(os.environ.get("TF_CPU_ALLOCATOR_USE_BFC"), "true")

    def test_the_users_choice_is_kept(self):
        with mock.patch.dict(os.environ, {"TF_CPU_ALLOCATOR_USE_BFC": "false"}, clear=True), self._without_tensorflow():
            startup.use_bfc_cpu_allocator()
            self.assertEqual(os.environ["TF_CPU_ALLOCATOR_USE_BFC"], "false")

    def test_too_late_once_tensorflow_is_imported(self):
        with mock.patch.dict(os.environ, {}, clear=True), mock.patch.dict(sys.modules, {"tensorflow": object()}):
            startup.use_bfc_cpu_allocator()
            self.assertNotIn("TF_CPU_ALLOCATOR_USE_BFC", os.environ)


if __name__ == "__main__":
    unittest.main()
