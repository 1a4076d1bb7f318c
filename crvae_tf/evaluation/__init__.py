"""Evaluation of trained runs.

likelihood   importance-sampled NLL / ELBO / IWAE_k of a run on a split (streaming float64, resumable, polling)
results      result paths and names, the JSON summary, the partial file that makes evaluation resumable
"""
