"""OCI images and Nydus images (``nydusify convert``, ``nydusify check``, local part)."""

from .convert import ConvertOptions, ConvertResult, Converter, convert
from .layout import OciLayout

__all__ = ["convert", "Converter", "ConvertOptions", "ConvertResult", "OciLayout"]
