"""convewma-service: ConvEWMA smoothing as a layer, a trainer and (soon) an HTTP service."""

from app.core.ewma import ConvEWMA

__all__ = ["ConvEWMA", "__version__"]
__version__ = "0.1.0"
