"""The numerical core: pure functions of numpy arrays (numpy and scipy only).

Distances, kernels and Gram matrices, matrix-based Rényi entropies and MI, kernel-width rules,
and the estimate of one (split, step) point from its arrays. Nothing here knows of Zarr, Dask,
torch or Snakemake.
"""
