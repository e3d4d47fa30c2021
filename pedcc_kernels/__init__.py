"""pedcc_kernels: fused kernels for PEDCC-Loss (pre-defined evenly-distributed class centroids)."""
from . import reference
from .centroid_files import load_centroids, save_centroids
from .centroids import centroid_stats, generate_centroids
from .loss import PEDCCLoss, pedcc_loss
from .nbody import nbody_forces

__all__ = ["PEDCCLoss", "centroid_stats", "generate_centroids", "load_centroids", "nbody_forces", "pedcc_loss",
           "reference", "save_centroids"]
__version__ = "0.1.0"
