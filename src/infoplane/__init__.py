"""infoplane: information-plane analysis of deep networks.

Matrix-based Rényi α-entropy of Gram matrices, tensor kernels for convolutional layers and kernel
widths chosen by alignment with the label kernel, run as an offline activation-store pipeline.

``import infoplane`` is light: torch, dask, zarr and matplotlib are imported by the stages that
need them.
"""

from infoplane.errors import InfoplaneError

__version__ = "0.1.0"

__all__ = ["InfoplaneError", "__version__"]
