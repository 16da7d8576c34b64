"""infoplane: information-plane analysis of deep networks.

Matrix-based Rényi α-entropy of Gram matrices, tensor kernels for convolutional layers and kernel
widths chosen by alignment with the label kernel, run as an offline activation-store pipeline.

``import infoplane`` is light: torch, dask, zarr and matplotlib are imported by the stages that
need them.
"""

import warnings

from infoplane.errors import InfoplaneError

# Snakemake marks a finished directory output (a Zarr store here) with a `.snakemake_timestamp`
# file, which zarr then reports as an unknown member at every open; it is harmless.
warnings.filterwarnings(
    "ignore", message=r"Object at \.snakemake_timestamp is not recognized", category=UserWarning
)

__version__ = "0.1.0"

__all__ = ["InfoplaneError", "__version__"]
