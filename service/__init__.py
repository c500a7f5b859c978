"""EfficientSAM serving: model (``service.model``), serving core (``service.core``),
HTTP gateway (``service.gateway``)."""

__version__ = "0.1.0"
