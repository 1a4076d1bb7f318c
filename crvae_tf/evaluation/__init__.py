"""Evaluation of trained runs.

likelihood   importance-sampled NLL / ELBO / IWAE_k of a run on a split (streaming float64, resumable, polling)
sprite_shapes  whether reconstructions of the embedded sprites keep their shapes (template matching, no classifier)
results      result paths and names, the JSON summary, the partial file that makes evaluation resumable
sample_quality  FID / KID / Inception Score from streamed float64 feature statistics; user-supplied feature networks
report_lib   the reproduction report: every run's results, budget and provenance -> paper-vs-ours Markdown tables
"""
