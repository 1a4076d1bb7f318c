"""Checks of a written SavedModel's graph: only core TensorFlow ops, no cuDNN-only RNN op, nothing
XLA-compiled, so that a stock TF Serving binary on a CPU can run it.
"""

import collections
import os

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

FORBIDDEN_OP_PREFIXES = ("CudnnRNN",)


# ---------------------------------------------------------------------------------------------------- op checks


class ServingGraphError(ValueError):
    """The exported graph contains an op a stock TF Serving binary cannot run (cuDNN-only, XLA, custom)."""


def saved_model_ops(saved_model_dir: str) -> collections.Counter:
    """Counts op types over the SavedModel's graph and every function in its library: the op set a server runs.

    Nodes that call a library function directly (their op is the function's name) are not counted; the
    function's own nodes are.
    """
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    counts = collections.Counter()
    for meta_graph in proto.meta_graphs:
        graph = meta_graph.graph_def
        function_names = {function.signature.name for function in graph.library.function}
        nodes = list(graph.node) + [node for function in graph.library.function for node in function.node_def]
        for node in nodes:
            if node.op not in function_names:
                counts[node.op] += 1
    return counts


def xla_compiled_functions(saved_model_dir: str) -> list:
    """Names of library functions (and nodes) carrying `_XlaMustCompile=True` (jit_compile) in the SavedModel."""
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    found = []
    for meta_graph in proto.meta_graphs:
        graph = meta_graph.graph_def
        for function in graph.library.function:
            if function.attr.get("_XlaMustCompile") is not None and function.attr["_XlaMustCompile"].b:
                found.append(function.signature.name)
            for node in function.node_def:
                if node.attr.get("_XlaMustCompile") is not None and node.attr["_XlaMustCompile"].b:
                    found.append(f"{function.signature.name}/{node.name}")
        for node in graph.node:
            if node.attr.get("_XlaMustCompile") is not None and node.attr["_XlaMustCompile"].b:
                found.append(node.name)
    return found


def check_serving_graph(saved_model_dir: str) -> collections.Counter:
    """Raises `ServingGraphError` unless every op is core TF, none is `CudnnRNN*` and nothing is XLA-compiled.

    Returns the op counts (`saved_model_ops`).
    """
    ops = saved_model_ops(saved_model_dir)
    cudnn = sorted(op for op in ops if op.startswith(FORBIDDEN_OP_PREFIXES))
    if cudnn:
        raise ServingGraphError(
            f"The serving graph contains cuDNN-only RNN ops {cudnn}: TF Serving on CPU cannot run "
            "them. Export on a machine without a GPU (CUDA_VISIBLE_DEVICES='') or give the "
            "model's RNN layers use_cudnn=False."
        )
    custom = sorted(op for op in ops if not hasattr(tf.raw_ops, op))
    if custom:
        raise ServingGraphError(
            f"The serving graph contains ops that are not core TensorFlow ops: {custom}. The "
            "stock TF Serving binary has no kernels for custom ops; express them in core ops."
        )
    xla = xla_compiled_functions(saved_model_dir)
    if xla:
        raise ServingGraphError(
            f"The serving graph has XLA-compiled functions {xla[:5]}: remove jit_compile=True "
            "from the traced functions (TF Serving does not compile them by default)."
        )
    return ops
