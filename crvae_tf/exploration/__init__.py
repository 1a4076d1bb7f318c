"""Latent exploration of trained runs.

empirical_prior   per-channel Gaussian prior fitted to posterior samples (the empirical cVAE, Fig. 2h)
views             the disentangling views of Sec. 4.4 as PNG / TensorBoard grids: progressive generation (Fig. 5a),
                  time-step interpolation (Fig. 5b-d, S4), style sampling (Fig. 5e-h, S5), manifold (Fig. S2, Eq. S1)
explore_lib       the explore binary's modes as functions of a run directory
completion_lib    image completion on validation faces (Sec. 4.3, Fig. 4): --mode=complete, masked PSNR / L1
"""
