"""Estimation on Dask: the only package that imports dask and distributed.

:mod:`~infoplane.estimate.cluster` gives the client and runs batches of tasks;
:mod:`~infoplane.estimate.distances` fills the distance cache; :mod:`~infoplane.estimate.pipeline`
schedules the per-step estimates of :mod:`infoplane.core.plane` and writes the result.
"""
