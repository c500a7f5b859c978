"""End to end with a real Label Studio 1.23.2 (its own venv under build/, headless):
a project with BrushLabels + smart KeyPointLabels + smart RectangleLabels, an image
uploaded, the gateway connected as its interactive ML backend (Basic auth, an API key as
password), clicks through Label Studio's own interactive-annotating endpoint, and
"Retrieve predictions" over the project."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from devtools.gateway_process import GatewayProcess
from devtools.label_studio import TOKEN, LabelStudioServer
from tests.conftest import Fixture
from tests.model.conformance import mask_iou
from tests.support import CONFIG, brush_masks, keypoint, rectangle, rle_mask

pytestmark = pytest.mark.slow  # a real Label Studio, or a gateway process: not in `make test-fast`

KEY = "labelstudio-e2e-key-0123456789"


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    with LabelStudioServer(tmp_path_factory.mktemp("label-studio")) as server:
        yield server


def upload(ls: LabelStudioServer, project: int, name: str, data: bytes) -> int:
    response = ls.api(
        "POST",
        f"/api/projects/{project}/import?return_task_ids=true",
        files={"file": (name, data, "image/jpeg" if name.endswith(".jpg") else "image/png")},
    )
    assert response.status_code == 201, response.text
    [task_id] = response.json()["task_ids"]
    return int(task_id)


def interactive(
    ls: LabelStudioServer, backend: int, task: int, context: list[dict[str, Any]]
) -> Any:
    response = ls.api(
        "POST",
        f"/api/ml/{backend}/interactive-annotating",
        json={"task": task, "context": {"result": context}},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


def segment(
    gateway: GatewayProcess, image_id: str, prompt: dict[str, Any], multimask: bool
) -> np.ndarray:
    response = httpx.post(
        f"{gateway.url}/segment",
        json={"image_id": image_id, "prompts": [prompt], "multimask": multimask},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    mask = rle_mask(response.json()["results"][0]["candidates"][0])
    assert mask.any()  # a mask to compare with, not two empty ones
    return mask


def test_label_studio_drives_the_gateway_as_its_ml_backend(
    label_studio: LabelStudioServer, fixture: Fixture, tmp_path: Path
) -> None:
    ls = label_studio
    settings = {
        "ESAM_CHECKPOINT": str(fixture.checkpoint),
        "ESAM_API_KEYS": KEY,
        "ESAM_LABEL_STUDIO_URL": ls.url,
        "ESAM_LABEL_STUDIO_API_KEY": TOKEN,
    }
    with GatewayProcess(settings, stderr=tmp_path / "gateway.log") as gateway:
        created = ls.api(
            "POST", "/api/projects", json={"title": "efficientsam e2e", "label_config": CONFIG}
        )
        assert created.status_code == 201, created.text
        project = created.json()["id"]
        image = fixture.image_path.read_bytes()
        task = upload(ls, project, "dogs.jpg", image)
        connected = ls.api(
            "POST",
            "/api/ml",
            json={
                "url": f"{gateway.url}/labelstudio",
                "project": project,
                "is_interactive": True,
                "title": "EfficientSAM",
                "auth_method": "BASIC_AUTH",
                "basic_auth_user": "label-studio",
                "basic_auth_pass": KEY,
            },
        )
        assert connected.status_code == 201, connected.text
        backend = connected.json()["id"]
        assert connected.json()["readable_state"] == "Connected"
        assert connected.json()["model_version"].startswith("efficientsam-ti-")

        # a keypoint: LS serializes the task, calls /predict with the context, answers the region
        data = interactive(ls, backend, task, [keypoint(45.0, 50.0)])
        [region] = data["result"]
        assert region["type"] == "brushlabels"
        assert region["value"]["brushlabels"] == ["dog"]
        image_id = hashlib.sha256(image).hexdigest()
        expected = segment(gateway, image_id, {"points": [[482.4, 301.5]], "labels": [1]}, True)
        [mask] = brush_masks([region])
        assert mask_iou(mask, expected) >= 0.99

        # a rectangle: the single-mask output for the box
        data = interactive(ls, backend, task, [rectangle(10, 20, 50, 60)])
        [region] = data["result"]
        assert region["value"]["brushlabels"] == ["stick"]
        box = {"box": [107.2, 120.6, 643.2, 482.4]}
        [mask] = brush_masks([region])
        assert mask_iou(mask, segment(gateway, image_id, box, False)) >= 0.99

        # "Retrieve predictions" over the project: a second image nobody clicked yet
        other = io.BytesIO()
        Image.open(fixture.image_path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(other, "PNG")
        second = upload(ls, project, "flipped.png", other.getvalue())
        retrieved = ls.api(
            "POST",
            f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
            json={"selectedItems": {"all": True, "excluded": []}},
        )
        assert retrieved.status_code == 200, retrieved.text
        predictions = ls.api("GET", f"/api/predictions/?project={project}").json()
        assert {p["task"] for p in predictions} >= {task, second}  # one stored per task
        second_id = hashlib.sha256(other.getvalue()).hexdigest()
        cached = httpx.head(
            f"{gateway.url}/embeddings/{second_id}", headers={"Authorization": f"Bearer {KEY}"}
        )
        assert cached.status_code in (200, 204)  # its first click will be a decode


def test_a_personal_access_token_fetches_label_studios_files(
    label_studio: LabelStudioServer, fixture: Fixture, tmp_path: Path
) -> None:
    """Label Studio 1.23's Personal Access Token (a JWT refresh token): the gateway
    exchanges it at /api/token/refresh/ and fetches /data/upload/... with the access token."""
    ls = label_studio
    created = ls.api("POST", "/api/projects", json={"title": "pat", "label_config": CONFIG})
    project = created.json()["id"]
    task = upload(ls, project, "dogs.jpg", fixture.image_path.read_bytes())
    reference = ls.api("GET", f"/api/tasks/{task}").json()["data"]["img"]
    assert reference.startswith("/data/upload/")
    issued = ls.api("POST", "/api/token/")
    if issued.status_code == 409:  # one per user: the earlier run's, rotate it
        issued = ls.api("POST", "/api/token/rotate/")
    assert issued.status_code in (200, 201), issued.text
    pat = issued.json()["token"]
    assert pat.count(".") == 2  # a JWT
    body = {
        "tasks": [{"id": task, "data": {"img": reference}}],
        "label_config": CONFIG,
        "params": {"context": {"result": [keypoint(45.0, 50.0)]}},
    }
    for api_key, status in ((pat, 200), (pat[:-4] + "AAAA", 502)):
        settings = {
            "ESAM_CHECKPOINT": str(fixture.checkpoint),
            "ESAM_LABEL_STUDIO_URL": ls.url,
            "ESAM_LABEL_STUDIO_API_KEY": api_key,
        }
        with GatewayProcess(settings, stderr=tmp_path / "gateway.log") as gateway:
            response = httpx.post(f"{gateway.url}/labelstudio/predict", json=body, timeout=120)
        assert response.status_code == status, response.text
        if status == 200:
            assert response.json()["results"][0]["result"][0]["type"] == "brushlabels"
        else:
            assert response.json()["error"]["code"] == "image_fetch_failed"
            assert "Personal Access Token" in response.json()["error"]["message"]
