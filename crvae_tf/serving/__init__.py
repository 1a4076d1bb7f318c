"""Serving: versioned, atomic SavedModels that TF Serving loads.

export_lib   export_model / export_run, the four signatures, metadata, graph checks, atomic publication
"""
