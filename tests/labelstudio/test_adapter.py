"""The Label Studio ML-backend adapter against the real gateway (in process) and a real
HTTP image host on loopback standing in for Label Studio's file paths. Brush RLE is
decoded by label_studio_sdk (Label Studio's venv) and compared with /segment's masks."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import time
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.conftest import Fixture
from tests.gateway.fixtures import Gateway, GatewayFactory
from tests.labelstudio.image_server import ImageServer, image_server
from tests.support import (
    CONFIG,
    assert_error,
    brush_masks,
    keypoint,
    png_bytes,
    rectangle,
    rle_mask,
)

LS_TOKEN = "legacy-token-0123456789"
KEY = "labelstudio-key-0123456789"
POLYGON_CONFIG = """<View><Image name="picture" value="$img"/>
  <PolygonLabels name="outline" toName="picture"><Label value="dog"/></PolygonLabels>
  <KeyPointLabels name="kp" toName="picture" smart="true"><Label value="dog"/></KeyPointLabels>
</View>"""


def predict_body(
    tasks: list[dict[str, Any]], context: list[dict[str, Any]] | None, config: str = CONFIG
) -> dict[str, Any]:
    params: dict[str, Any] = {"login": None, "password": None, "context": None}
    if context is not None:
        params["context"] = {"result": context}
    return {"tasks": tasks, "project": "1.1700000000", "label_config": config, "params": params}


def task(image: str, task_id: int = 1) -> dict[str, Any]:
    # as Label Studio serializes it for an interactive call: drafts and annotations included
    return {
        "id": task_id,
        "data": {"img": image},
        "annotations": [],
        "drafts": [],
        "predictions": [],
    }


@pytest.fixture
def files(fixture: Fixture) -> Iterator[ImageServer]:
    with image_server(token=LS_TOKEN) as server:
        server.files["/data/upload/1/abcd1234-dogs.jpg"] = fixture.image_path.read_bytes()
        server.files["/public/other.png"] = png_bytes(96, 64, seed=3)
        yield server


def basic(key: str = KEY) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"labelstudio:{key}".encode()).decode()}


def settings(server: ImageServer, **extra: Any) -> dict[str, Any]:
    return {
        "label_studio_url": server.url,
        "label_studio_api_key": LS_TOKEN,
        "api_keys": [KEY],
        **extra,
    }


async def segment(
    gw: Gateway, image_id: str, prompt: dict[str, Any], multimask: bool
) -> dict[str, Any]:
    body = {"image_id": image_id, "prompts": [prompt], "multimask": multimask}
    response = await gw.client.post(
        "/segment", json=body, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert response.status_code == 200, response.text
    best: dict[str, Any] = response.json()["results"][0]["candidates"][0]
    return best


async def test_protocol_endpoints_answer_as_label_studio_expects(
    gateway_factory: GatewayFactory, files: ImageServer
) -> None:
    async with gateway_factory(**settings(files)) as gw:
        health = await gw.client.get("/labelstudio/health", headers=basic())
        assert health.status_code == 200
        assert health.json()["status"] == "UP"
        model = health.json()["model_version"]
        body = {"project": "1.1", "schema": CONFIG, "hostname": "http://ls", "access_token": "x"}
        setup = await gw.client.post("/labelstudio/setup", json=body, headers=basic())
        assert setup.json() == {"model_version": model}
        bad = {
            **body,
            "schema": "<View><Image name='i' value='$i'/><Choices name='c' toName='i'/></View>",
        }
        assert_error(
            await gw.client.post("/labelstudio/setup", json=bad, headers=basic()),
            422,
            "invalid_request",
        )
        for event in (
            {"action": "ANNOTATION_CREATED", "annotation": {"id": 1}},
            {"action": "START_TRAINING"},
        ):
            webhook = await gw.client.post("/labelstudio/webhook", json=event, headers=basic())
            assert webhook.status_code == 200
        versions = await gw.client.get("/labelstudio/versions", headers=basic())
        assert versions.json() == {"versions": [model]}
        assert files.seen == []  # none of them fetched anything


async def test_basic_auth_with_an_api_key_as_password(
    gateway_factory: GatewayFactory, files: ImageServer
) -> None:
    async with gateway_factory(**settings(files)) as gw:
        refused = await gw.client.get("/labelstudio/health")
        assert_error(refused, 401, "unauthorized")
        assert refused.headers["WWW-Authenticate"].startswith("Basic")
        assert_error(
            await gw.client.get("/labelstudio/health", headers=basic("wrong-key-0123456789")),
            401,
            "unauthorized",
        )
        malformed = {"Authorization": "Basic !!!not-base64"}
        assert_error(
            await gw.client.get("/labelstudio/health", headers=malformed), 401, "unauthorized"
        )
        assert (await gw.client.get("/labelstudio/health", headers=basic())).status_code == 200
        bearer = {"Authorization": f"Bearer {KEY}"}
        assert (await gw.client.get("/labelstudio/health", headers=bearer)).status_code == 200
        # Basic is Label Studio's only: the rest of the API keeps Bearer
        assert_error(
            await gw.client.post("/embed", content=png_bytes(), headers=basic()),
            401,
            "unauthorized",
        )


async def test_a_click_is_a_brush_region_equal_to_segments_mask(
    gateway_factory: GatewayFactory, files: ImageServer, fixture: Fixture
) -> None:
    async with gateway_factory(**settings(files)) as gw:
        reference = "/data/upload/1/abcd1234-dogs.jpg"
        body = predict_body([task(reference)], [keypoint(45.0, 50.0)])
        response = await gw.client.post("/labelstudio/predict", json=body, headers=basic())
        assert response.status_code == 200, response.text
        [prediction] = response.json()["results"]
        [region] = prediction["result"]
        assert region["type"] == "brushlabels"
        assert (region["from_name"], region["to_name"]) == ("brush", "image")
        assert region["value"]["format"] == "rle"
        assert region["value"]["brushlabels"] == ["dog"]
        assert (region["original_width"], region["original_height"]) == (1072, 603)
        assert isinstance(region["id"], str)
        assert region["id"]
        assert files.seen[0].authorization == f"Token {LS_TOKEN}"  # Label Studio's own path

        image_id = hashlib.sha256(fixture.image_path.read_bytes()).hexdigest()
        # one positive point: the best of the three multimask candidates
        best = await segment(gw, image_id, {"points": [[482.4, 301.5]], "labels": [1]}, True)
        [mask] = brush_masks([region])
        np.testing.assert_array_equal(mask, rle_mask(best))
        assert region["score"] == pytest.approx(best["score"])
        assert prediction["score"] == pytest.approx(best["score"])
        assert prediction["model_version"].startswith("efficientsam-ti-")

        # the next click on the task: nothing downloaded, nothing encoded
        fetched, encoded = len(files.seen), gw.encodes
        body = predict_body(
            [task(reference)],
            [keypoint(45.0, 50.0), keypoint(80.0, 20.0, positive=False), rectangle(10, 20, 50, 60)],
        )
        response = await gw.client.post("/labelstudio/predict", json=body, headers=basic())
        assert response.status_code == 200, response.text
        assert len(files.seen) == fetched
        assert gw.encodes == encoded
        [region] = response.json()["results"][0]["result"]
        assert region["value"]["brushlabels"] == ["stick"]  # the last item's label
        # a box and points: the single-mask output
        prompt = {
            "points": [[482.4, 301.5], [857.6, 120.6]],
            "labels": [1, 0],
            "box": [107.2, 120.6, 643.2, 482.4],
        }
        single = await segment(gw, image_id, prompt, False)
        [mask] = brush_masks([region])
        np.testing.assert_array_equal(mask, rle_mask(single))


async def test_a_polygon_config_gets_polygons(
    gateway_factory: GatewayFactory, files: ImageServer
) -> None:
    async with gateway_factory(**settings(files)) as gw:
        body = predict_body(
            [task("/data/upload/1/abcd1234-dogs.jpg")], [keypoint(45.0, 50.0)], POLYGON_CONFIG
        )
        response = await gw.client.post("/labelstudio/predict", json=body, headers=basic())
        assert response.status_code == 200, response.text
        regions = response.json()["results"][0]["result"]
        assert regions
        assert {r["type"] for r in regions} == {"polygonlabels"}
        assert {(r["from_name"], r["to_name"]) for r in regions} == {("outline", "picture")}
        # the polygons, filled, cover the mask /segment gives for the same click
        drawn = np.zeros((603, 1072), np.uint8)
        for region in regions:
            points = np.array(region["value"]["points"]) * [1072 / 100, 603 / 100]
            assert region["value"]["closed"] is True
            cv2.fillPoly(drawn, [np.round(points).astype(np.int32)], (1,))
        image_id = hashlib.sha256(files.files["/data/upload/1/abcd1234-dogs.jpg"]).hexdigest()
        mask = rle_mask(
            await segment(gw, image_id, {"points": [[482.4, 301.5]], "labels": [1]}, True)
        )
        inside = drawn.astype(bool)
        assert (inside & mask).sum() / mask.sum() > 0.97  # holes are not drawn: a superset


async def test_without_a_click_every_task_is_encoded_and_answered_once(
    gateway_factory: GatewayFactory, files: ImageServer
) -> None:
    async with gateway_factory(**settings(files, fetch_allowed_hosts=["127.0.0.1"])) as gw:
        tasks = [
            task("/data/upload/1/abcd1234-dogs.jpg", 1),
            task(f"{files.url}/public/other.png", 2),
            task("http://images.example.com/elsewhere.png", 3),  # not on the allow-list
            task(f"{files.url}/public/missing.png", 4),  # 404
        ]
        response = await gw.client.post(
            "/labelstudio/predict", json=predict_body(tasks, None), headers=basic()
        )
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert len(results) == 4  # one per task, in order, so Label Studio stores them
        model = results[0]["model_version"]
        assert [r["result"] for r in results] == [[], [], [], []]
        assert [r["model_version"] for r in results] == [
            model,
            model,
            model + "+failed",
            model + "+failed",
        ]
        for data in (
            files.files["/data/upload/1/abcd1234-dogs.jpg"],
            files.files["/public/other.png"],
        ):
            image_id = hashlib.sha256(data).hexdigest()
            head = await gw.client.head(
                f"/embeddings/{image_id}", headers={"Authorization": f"Bearer {KEY}"}
            )
            assert head.status_code in (200, 204), image_id  # the first click is a decode


async def test_a_single_task_that_cannot_be_fetched_is_a_clear_error(
    gateway_factory: GatewayFactory, files: ImageServer
) -> None:
    async with gateway_factory(**settings(files, label_studio_api_key="wrong-token-012345")) as gw:
        cases = [
            ("http://169.254.169.254/latest/meta-data/", 422, "image_url_not_allowed"),
            (
                f"{files.url.replace('127.0.0.1', 'localhost')}/public/other.png",
                422,
                "image_url_not_allowed",
            ),
            ("s3://bucket/key.png", 422, "image_url_not_allowed"),  # no task id to presign
            ("/data/upload/1/abcd1234-dogs.jpg", 502, "image_fetch_failed"),  # 401 upstream
            ("/data/upload/1/missing.jpg", 502, "image_fetch_failed"),
        ]
        for reference, status, code in cases:
            t = (
                task(reference)
                if not reference.startswith("s3://")
                else {"data": {"img": reference}}
            )
            body = predict_body([t], [keypoint(50, 50)])
            response = await gw.client.post("/labelstudio/predict", json=body, headers=basic())
            assert_error(response, status, code)
        assert all(seen.path.startswith("/data/upload/1/") for seen in files.seen)
        no_image = predict_body([{"id": 9, "data": {"other": "x"}}], [keypoint(50, 50)])
        assert_error(
            await gw.client.post("/labelstudio/predict", json=no_image, headers=basic()),
            422,
            "invalid_request",
        )


@pytest.mark.slow
async def test_preannotation_with_everything(
    gateway_factory: GatewayFactory, files: ImageServer
) -> None:
    # random weights: lenient thresholds, as the API call below
    lenient = {
        "pred_iou_thresh": -1,
        "stability_score_thresh": 0.45,
        "stability_score_offset": 0.05,
    }
    extra = {
        "label_studio_preannotate": "everything",
        "max_everything_prompts": 16,
        "label_studio_everything": lenient,
    }
    async with gateway_factory(**settings(files, **extra)) as gw:
        body = predict_body([task("/data/upload/1/abcd1234-dogs.jpg")], None)
        response = await gw.client.post("/labelstudio/predict", json=body, headers=basic())
        assert response.status_code == 200, response.text
        regions = response.json()["results"][0]["result"]
        # the same job through the API: 4×4 points, default thresholds
        image_id = hashlib.sha256(files.files["/data/upload/1/abcd1234-dogs.jpg"]).hexdigest()
        api = await gw.client.post(
            "/segment/everything",
            json={"image_id": image_id, "points_per_side": 4, **lenient},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        expected = [rle_mask(m) for m in api.json()["masks"]]
        assert expected  # the fixture image has objects to find
        assert len(regions) == len(expected)
        for region, got, want in zip(regions, brush_masks(regions), expected, strict=True):
            assert region["value"]["brushlabels"] == ["dog"]  # the brush tag's first label
            np.testing.assert_array_equal(got, want)


@pytest.mark.slow
async def test_a_batch_is_answered_within_its_budget_and_the_rest_keeps_encoding(
    gateway_factory: GatewayFactory, files: ImageServer
) -> None:
    extra = {"fetch_allowed_hosts": ["127.0.0.1"], "label_studio_batch_budget_s": 4.0}
    async with gateway_factory(**settings(files, **extra)) as gw:
        files.files["/public/late.png"] = png_bytes(80, 60, seed=11)
        tasks = [
            task(f"{files.url}/public/other.png", 1),
            task(f"{files.url}/slow?s=8&then=/public/late.png", 2),  # ready after the answer
        ]
        started = time.monotonic()
        response = await gw.client.post(
            "/labelstudio/predict", json=predict_body(tasks, None), headers=basic()
        )
        assert time.monotonic() - started < 7.5  # not waiting for the slow image
        assert response.status_code == 200, response.text
        health = await gw.client.get("/labelstudio/health", headers=basic())
        model = health.json()["model_version"]
        versions = [r["model_version"] for r in response.json()["results"]]
        assert versions == [model, model + "+pending"]
        late_id = hashlib.sha256(files.files["/public/late.png"]).hexdigest()
        keyed = {"Authorization": f"Bearer {KEY}"}
        for _ in range(300):  # the late image is encoded and cached after the answer
            if (await gw.client.head(f"/embeddings/{late_id}", headers=keyed)).status_code < 300:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the pending task's image was never cached")
        # the next "Retrieve predictions" for it: no download, an ordinary prediction
        fetched = len(files.seen)
        again = await gw.client.post(
            "/labelstudio/predict", json=predict_body(tasks, None), headers=basic()
        )
        assert [r["model_version"] for r in again.json()["results"]] == [model, model]
        assert len(files.seen) == fetched


async def test_replicas_sharing_redis_download_an_image_once(
    gateway_factory: GatewayFactory, files: ImageServer, redis_url: str
) -> None:
    shared = settings(files, cache="redis", redis_url=redis_url)
    body = predict_body([task("/data/upload/1/abcd1234-dogs.jpg")], [keypoint(45.0, 50.0)])
    async with gateway_factory(**shared) as first:
        answer = await first.client.post("/labelstudio/predict", json=body, headers=basic())
        assert answer.status_code == 200, answer.text
    assert len(files.seen) == 1
    async with gateway_factory(**shared) as second:  # another replica, same Redis
        answer = await second.client.post("/labelstudio/predict", json=body, headers=basic())
        assert answer.status_code == 200, answer.text
        assert second.encodes == 0  # nor encoded
    assert len(files.seen) == 1  # not downloaded again


def gif_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "GIF")
    return out.getvalue()


def data_uri(data: bytes, media_type: str = "image/jpeg") -> str:
    return f"data:{media_type};base64," + base64.b64encode(data).decode()


async def test_an_inline_image_is_read_without_a_fetch(
    gateway_factory: GatewayFactory, files: ImageServer, fixture: Fixture
) -> None:
    image = fixture.image_path.read_bytes()
    async with gateway_factory(**settings(files, max_image_bytes=len(image) + 10)) as gw:
        body = predict_body([task(data_uri(image))], [keypoint(45.0, 50.0)])
        response = await gw.client.post("/labelstudio/predict", json=body, headers=basic())
        assert response.status_code == 200, response.text
        [region] = response.json()["results"][0]["result"]
        image_id = hashlib.sha256(image).hexdigest()
        best = await segment(gw, image_id, {"points": [[482.4, 301.5]], "labels": [1]}, True)
        [mask] = brush_masks([region])
        np.testing.assert_array_equal(mask, rle_mask(best))
        encoded = gw.encodes
        response = await gw.client.post("/labelstudio/predict", json=body, headers=basic())
        assert response.status_code == 200, response.text
        assert gw.encodes == encoded  # cached by its bytes
        assert files.seen == []

        bad = [
            ("data:text/plain;base64,aGVsbG8=", 422, "image_url_not_allowed"),
            ("data:image/png,rawbytes", 422, "image_url_not_allowed"),
            ("data:image/png;base64,not*base64", 422, "invalid_image"),
            (data_uri(gif_bytes(), "image/gif"), 415, "unsupported_media_type"),
            (data_uri(image + bytes(100)), 413, "image_too_large"),
        ]
        for reference, status, code in bad:
            body = predict_body([task(reference)], [keypoint(45.0, 50.0)])
            response = await gw.client.post("/labelstudio/predict", json=body, headers=basic())
            assert_error(response, status, code)


async def test_a_rectangle_thinner_than_a_pixel_is_one_pixel_wide(
    gateway_factory: GatewayFactory, files: ImageServer
) -> None:
    async with gateway_factory(**settings(files)) as gw:
        reference = "/data/upload/1/abcd1234-dogs.jpg"
        # drawn at the right edge with no width: the image's last column
        body = predict_body([task(reference)], [rectangle(100.0, 20.0, 0.0, 60.0)])
        response = await gw.client.post("/labelstudio/predict", json=body, headers=basic())
        assert response.status_code == 200, response.text
        [region] = response.json()["results"][0]["result"]
        image_id = hashlib.sha256(files.files[reference]).hexdigest()
        expected = await segment(gw, image_id, {"box": [1071.0, 120.6, 1072.0, 482.4]}, False)
        [mask] = brush_masks([region])
        np.testing.assert_array_equal(mask, rle_mask(expected))


async def test_requests_are_checked_as_the_document_states(
    gateway_factory: GatewayFactory, files: ImageServer
) -> None:
    async with gateway_factory(**settings(files)) as gw:
        reference = "/data/upload/1/abcd1234-dogs.jpg"
        without_y = keypoint(45.0, 50.0)
        del without_y["value"]["y"]
        as_text = keypoint(45.0, 50.0)
        as_text["value"]["x"] = "45"
        for click in (without_y, as_text, {"value": {"x": 1, "y": 2}}, "a click"):
            body = predict_body([task(reference)], [click])  # type: ignore[list-item]
            response = await gw.client.post("/labelstudio/predict", json=body, headers=basic())
            assert_error(response, 422, "invalid_request")
        for body in (
            predict_body([], None),
            {**predict_body([task(reference)], None), "label_config": None},
            predict_body([{"id": 1}], None),  # a task without data
            predict_body([{"id": "one", "data": {"img": reference}}], None),
        ):
            response = await gw.client.post("/labelstudio/predict", json=body, headers=basic())
            assert_error(response, 422, "invalid_request")
        assert files.seen == []
        # results of other tools in the context are ignored
        other = {"type": "brushlabels", "value": {"format": "rle", "rle": [1, 2]}}
        click = predict_body([task(reference)], [keypoint(45.0, 50.0)])
        with_other = predict_body([task(reference)], [other, keypoint(45.0, 50.0)])
        answers = []
        for body in (click, with_other):
            response = await gw.client.post("/labelstudio/predict", json=body, headers=basic())
            assert response.status_code == 200, response.text
            answers.append(response.json()["results"][0]["result"][0]["value"]["rle"])
        assert answers[0] == answers[1]
        # a webhook body is an event: it names its action
        for event in ({}, {"action": 1}, ["ANNOTATION_CREATED"]):
            response = await gw.client.post("/labelstudio/webhook", json=event, headers=basic())
            assert_error(response, 422, "invalid_request")
