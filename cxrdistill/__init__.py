"""cxrdistill: chest X-ray AI at low resolution, by knowledge distillation.

Light on import: ``import cxrdistill`` does not load torch; the sub-packages do when used.
"""

from cxrdistill.io import XRay, XRayMeta, XRayReadError, load_xray

__version__ = "0.1.0"

__all__ = ["XRay", "XRayMeta", "XRayReadError", "__version__", "load_xray"]
