"""What the adapter needs from a project's labeling config (Label Studio's XML): the
image's data key and the tags its answers go to."""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from service.errors import InvalidRequestError

MAX_CONFIG_CHARS = 1 << 20


@dataclass(frozen=True)
class Tag:
    name: str
    to_name: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class LabelConfig:
    image_name: str  # the <Image name=...> the regions belong to
    image_key: str  # task.data key: value="$image" → "image"
    brush: Tag | None  # <BrushLabels>: the masks as brush regions
    polygon: Tag | None  # <PolygonLabels>: the masks' outlines too

    def label(self, preferred: str | None) -> str | None:
        """The label a region gets: the clicked one, else the output tag's first."""
        if preferred:
            return preferred
        for tag in (self.brush, self.polygon):
            if tag and tag.labels:
                return tag.labels[0]
        return None


def _tag(element: ET.Element) -> Tag:
    labels = tuple(
        v for child in element if child.tag == "Label" and (v := child.get("value")) is not None
    )
    return Tag(element.get("name", ""), element.get("toName", ""), labels)


@functools.lru_cache(maxsize=64)
def parse_label_config(xml: str) -> LabelConfig:
    """The config's Image tag and its BrushLabels / PolygonLabels, or a clear 422."""
    if len(xml) > MAX_CONFIG_CHARS:
        raise InvalidRequestError(f"label_config: longer than {MAX_CONFIG_CHARS} characters")
    try:
        root = ET.fromstring(xml)  # noqa: S314 - Python's expat refuses entity expansion bombs
    except ET.ParseError as exc:
        raise InvalidRequestError(f"label_config: not valid XML ({exc})") from exc
    images = {e.get("name", ""): e for e in root.iter("Image")}
    brush = next((_tag(e) for e in root.iter("BrushLabels")), None)
    polygon = next((_tag(e) for e in root.iter("PolygonLabels")), None)
    output = brush or polygon
    target = output.to_name if output is not None else None
    if not images or target is None or target not in images:
        raise InvalidRequestError(
            "label_config: EfficientSAM answers with masks: it needs an <Image> and a "
            "<BrushLabels> (or <PolygonLabels>) whose toName is that image"
        )
    value = images[target].get("value", "")
    if not value.startswith("$") or len(value) < 2:
        raise InvalidRequestError(f'label_config: <Image name="{target}"> needs value="$<key>"')
    if polygon is not None and polygon.to_name != target:
        polygon = None  # drawn on another image: not ours to fill
    return LabelConfig(target, value[1:], brush, polygon)
