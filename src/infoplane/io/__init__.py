"""The three on-disk contracts, each read and written by exactly one module.

- :mod:`infoplane.io.store`: the activation store (``activations.zarr``; its layout, writer,
  reader and validator are the package's modules, its public API the package itself);
- :mod:`infoplane.io.cache`: the distance cache (``distances.zarr``);
- :mod:`infoplane.io.results`: the estimates (``mi/<estimator>.zarr``).

:mod:`infoplane.io.files` holds the file mechanics they share (atomic replacement, canonical
JSON). These are the only modules that import zarr; they know nothing of kernels or Dask.
"""
