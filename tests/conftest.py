"""Test-session setup: quiet TensorFlow, import the package from this checkout."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def pytest_collection_modifyitems(items):
    """Drops `tf.test.TestCase.test_session`, a TF1 helper that pytest collects and skips as "Not a test"."""
    items[:] = [item for item in items if item.name != "test_session"]
