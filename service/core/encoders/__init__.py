"""Image encoder backends behind one small interface (see ``base.Encoder``)."""

from service.core.encoders.base import EncodedImage, Encoder
from service.core.encoders.local import LocalEncoder

__all__ = ["EncodedImage", "Encoder", "LocalEncoder"]
