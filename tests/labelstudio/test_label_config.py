"""What the adapter reads from a labeling config, and the pre-annotation parameters."""

from __future__ import annotations

import pytest

from service.errors import InvalidRequestError
from service.gateway.labelstudio.label_config import parse_label_config
from service.gateway.labelstudio.serving import everything_params
from service.settings import Settings


def test_the_image_key_and_output_tags_are_found() -> None:
    config = parse_label_config(
        '<View><Image name="img" value="$photo"/><Image name="other" value="$x"/>'
        '<BrushLabels name="b" toName="img"><Label value="cat"/><Label value="dog"/></BrushLabels>'
        '<PolygonLabels name="p" toName="other"><Label value="z"/></PolygonLabels></View>'
    )
    assert (config.image_name, config.image_key) == ("img", "photo")
    assert config.brush is not None
    assert config.brush.labels == ("cat", "dog")
    assert config.polygon is None  # drawn on another image
    assert config.label(None) == "cat"
    assert config.label("dog") == "dog"


@pytest.mark.parametrize(
    ("xml", "why"),
    [
        ("<View><Image name='i' value='$i'/>", "not valid XML"),
        ("<View><Image name='i' value='$i'/><Choices name='c' toName='i'/></View>", "BrushLabels"),
        ("<View><BrushLabels name='b' toName='i'/></View>", "BrushLabels"),  # no image
        ("<View><Image name='i' value='i'/><BrushLabels name='b' toName='i'/></View>", "value="),
        (
            '<!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
            '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><View>&c;</View>',
            "BrushLabels",
        ),
    ],
)
def test_a_config_the_model_cannot_answer_is_refused(xml: str, why: str) -> None:
    with pytest.raises(InvalidRequestError, match=why):
        parse_label_config(xml)


def test_preannotation_parameters_are_checked_at_start_up() -> None:
    assert everything_params(Settings(max_everything_prompts=100)).points_per_side == 10
    tuned = Settings(label_studio_everything={"points_per_side": 8, "pred_iou_thresh": 0.5})
    assert everything_params(tuned).pred_iou_thresh == 0.5
    with pytest.raises(ValueError, match="unknown parameter"):
        everything_params(Settings(label_studio_everything={"crop_n_layers": 1}))
    with pytest.raises(ValueError, match="ESAM_MAX_EVERYTHING_PROMPTS"):
        everything_params(
            Settings(max_everything_prompts=16, label_studio_everything={"points_per_side": 5})
        )
