"""The vectorised brush RLE against label_studio_sdk's own encoder and decoder (the
oracle, run in Label Studio's venv): byte for byte, and back to the same mask."""

from __future__ import annotations

import numpy as np
import pytest

from devtools.label_studio import sdk_call
from service.gateway.labelstudio.brush_rle import encode_brush_rle

#: for each mask: the SDK's encoding of mask * 255 and its decoding of ours (alpha > 0)
ORACLE = """
import json, sys
import numpy as np
from label_studio_sdk.converter import brush
out = []
for item in json.load(sys.stdin):
    mask = np.array(item["mask"], dtype=np.uint8).reshape(item["shape"])
    theirs = [int(v) for v in brush.mask2rle(mask * 255)]
    decoded = brush.decode_rle(item["ours"]).reshape(*item["shape"], 4)
    out.append({"theirs": theirs, "decoded": (decoded[:, :, 3] > 0).astype(int).ravel().tolist()})
print(json.dumps(out))
"""


def masks() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:300, 0:401]
    disc = (yy - 150) ** 2 + (xx - 200) ** 2 < 120**2
    ring = disc & ((yy - 150) ** 2 + (xx - 200) ** 2 > 60**2)
    return {
        "single pixel": np.ones((1, 1), bool),
        "empty": np.zeros((5, 7), bool),
        "full, runs over 65,536 bytes": np.ones((200, 300), bool),
        "noise (runs of one pixel)": rng.random((23, 31)) > 0.5,
        "disc": disc,
        "ring (holes, every run length)": ring,
        "stripes": (xx // 3 % 2 == 0) & (yy < 200),
        "first pixel set": np.pad(np.ones((3, 3), bool), ((0, 4), (0, 4))),
    }


def test_encoding_is_the_sdks_byte_for_byte_and_decodes_to_the_mask() -> None:
    cases = masks()
    ours = {name: encode_brush_rle(mask) for name, mask in cases.items()}
    payload = [
        {"mask": m.astype(int).ravel().tolist(), "shape": list(m.shape), "ours": ours[name]}
        for name, m in cases.items()
    ]
    for (name, mask), oracle in zip(cases.items(), sdk_call(ORACLE, payload), strict=True):
        assert ours[name] == oracle["theirs"], name
        decoded = np.array(oracle["decoded"], dtype=bool).reshape(mask.shape)
        np.testing.assert_array_equal(decoded, mask, err_msg=name)


def test_a_mask_must_be_two_dimensional() -> None:
    with pytest.raises(ValueError, match="2-D"):
        encode_brush_rle(np.ones((2, 2, 2), bool))
