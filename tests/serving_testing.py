"""Helpers of the serving tests (C API and gRPC): a tiny untrained model exported, and its SignatureDefs.

The serving checks compare two loaders (or two transports) of the *same* SavedModel, so the weights need no
training: the tiny recipes (base width 4, latent 8 x 4 x 4 = 128, T = 8; crVAE LSTM width 16) build in under a
second and export in a few.
"""

import os

import gin
import numpy as np
from tensorflow.core.protobuf import saved_model_pb2

from crvae_tf import builders
from crvae_tf import runs
from crvae_tf.serving import export_lib

import testing_utils

RECIPE = "mnist_crvae.gin"
HEAD = "channel_recurrent"
VERSION = 1
NUMPY_DTYPES = {1: np.float32, 3: np.int32, 9: np.int64}  # DataType enum -> numpy (DT_FLOAT, DT_INT32, DT_INT64)


def tiny_model(recipe: str = RECIPE, head: str = HEAD, seed: int = 0):
    """The recipe's model shrunk by `testing_utils.TINY_BINDINGS` and the tiny `head` bindings (random weights,
    built); gin is cleared afterwards. Default: the crVAE."""
    gin.clear_config()
    try:
        runs.parse_gin(
            [os.path.join(testing_utils.GIN_DIR, recipe)],
            testing_utils.TINY_BINDINGS + testing_utils.tiny_head_bindings(head),
            finalize=False,
        )
        return builders.build_model(seed=seed)
    finally:
        gin.clear_config()


def export_tiny(export_dir: str, model=None):
    """Exports `model` (default: `tiny_model()`) as `export_dir/<VERSION>`; returns the `export_lib.Export`."""
    return export_lib.export_model(model if model is not None else tiny_model(), export_dir, VERSION)


def signature_defs(saved_model_dir: str):
    """The SavedModel's `signature_def` map (name -> SignatureDef proto), read from saved_model.pb without loading."""
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    (meta_graph,) = [m for m in proto.meta_graphs if "serve" in m.meta_info_def.tags]
    return meta_graph.signature_def
