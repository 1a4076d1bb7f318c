"""Latent exploration of trained runs.

empirical_prior   per-channel Gaussian prior fitted to posterior samples (the empirical cVAE, Fig. 2h)
"""
