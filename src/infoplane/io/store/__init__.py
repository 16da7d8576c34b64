"""The activation store: one Zarr v3 store per run, one xarray Dataset per probe split.

Layout (the public contract: stores written by other code that follow it are read and validated
the same way)::

    activations.zarr/            root attributes: schema_version, experiment, run, seed, model,
                                 dataset, layers, config, device, infoplane_version, torch_version
      train/  test/              one group per probe split
        step(step)               int64, training iteration of each capture (index coordinate)
        epoch(step)              float64 coordinate
        index(step, sample)      int64 dataset indices of the probe samples
        x(step, sample, ...)     float32 network inputs
        y(step, sample)          int64 labels
        <layer>(step, sample, ...)   float32 or float16, one per recorded layer
        captured(step)           bool, set only after every variable of the step is written

Every per-step variable is chunked one step per chunk, ``(1, N, *shape)``, compressed with
Blosc-zstd (byte shuffle) and protected by a CRC32C checksum, so a truncated or corrupt chunk is
an error and never a silent wrong number. Trailing dimensions are named ``<variable>_dim<k>``.

The capture schedule is known up front: :func:`create_store` allocates every array for every
step, and :meth:`ActivationStoreWriter.write` fills one step with region writes. Metadata never
changes after creation, so the consolidated metadata written then stays valid, including for the
store of a killed writer. Readers (:func:`open_activations`) see captured steps only.
"""

from infoplane.io.store.layout import (
    ACTIVATION_DTYPES,
    PROVENANCE_KEYS,
    REQUIRED_ATTRS,
    RESERVED_NAMES,
    SCHEMA_VERSION,
    SPLITS,
    ActivationDtype,
)
from infoplane.io.store.reader import (
    SplitPlan,
    StorePlan,
    StoreReader,
    open_activations,
    read_store_plan,
)
from infoplane.io.store.validate import StoreReport, store_info, validate_store
from infoplane.io.store.writer import ActivationStoreWriter, create_store, open_writer

__all__ = [
    "ACTIVATION_DTYPES",
    "PROVENANCE_KEYS",
    "REQUIRED_ATTRS",
    "RESERVED_NAMES",
    "SCHEMA_VERSION",
    "SPLITS",
    "ActivationDtype",
    "ActivationStoreWriter",
    "SplitPlan",
    "StorePlan",
    "StoreReader",
    "StoreReport",
    "create_store",
    "open_activations",
    "open_writer",
    "read_store_plan",
    "store_info",
    "validate_store",
]
