"""Serving: versioned, atomic SavedModels that TF Serving loads.

export_lib   export_model / export_run: the signatures of endpoints.ENDPOINTS, metadata, graph checks, atomic writes
endpoints    the endpoint registry (serving_default, sample, encode, reconstruct, traverse, traverse_images,
             complete) and the in-graph input checks
"""
