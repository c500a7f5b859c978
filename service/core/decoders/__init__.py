"""Mask decoder backends behind one small interface (see ``base.Decoder``)."""

from service.core.decoders.base import Candidate, Decoder, DecodeRequest
from service.core.decoders.local import LocalDecoder

__all__ = ["Candidate", "DecodeRequest", "Decoder", "LocalDecoder"]
