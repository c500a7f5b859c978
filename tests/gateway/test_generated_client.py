"""A client generated from the live OpenAPI document works, as a platform team would use it.

``openapi-python-client`` is installed into its own venv under ``build/`` (reused when
present; not a dependency of the project), generates a package from ``/openapi.json``
of a real gateway with an API key, and a script run by that venv's Python embeds an
image three ways, segments it by id and reads a 404 ``ErrorResponse``. Its answers
are compared with the same requests made here with httpx.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from devtools.gateway_process import REPO, GatewayProcess
from tests.conftest import Fixture
from tests.support import png_bytes

# a browser, Redis Cluster/Sentinel, a fuzzer or a client generator: not in `make test-fast`
pytestmark = pytest.mark.slow

GENERATOR = "openapi-python-client==0.29.1"
VENV = REPO / "build" / "openapi-python-client"
KEY = "generated-client-key-0123"
PACKAGE = "efficient_sam_serving_client"  # from the document's title

SCRIPT = """
import base64, json, sys
import httpx
from efficient_sam_serving_client import AuthenticatedClient
from efficient_sam_serving_client.api.embeddings import embed, has_embedding
from efficient_sam_serving_client.api.segmentation import segment
from efficient_sam_serving_client.models import (
    EmbedJsonBody, EmbedResponse, ErrorResponse, PromptIn, SegmentByIdRequest,
    SegmentResponse, SegmentWithImageRequest,
)
from efficient_sam_serving_client.types import File

url, key, image_path = sys.argv[1:4]
png = open(image_path, "rb").read()
# an encode can take seconds on a busy CI machine: httpx's default 5 s is too short
client = AuthenticatedClient(base_url=url, token=key, timeout=httpx.Timeout(300))
as_json = embed.sync(client=client, body=EmbedJsonBody(image=base64.b64encode(png).decode()))
as_file = embed.sync(client=client, body=File(payload=png, file_name="a.png"))
assert isinstance(as_json, EmbedResponse) and isinstance(as_file, EmbedResponse)
cached = has_embedding.sync_detailed(as_json.image_id, client=client).status_code
prompt = PromptIn(points=[[20.0, 12.0]], labels=[1])
by_id = segment.sync(
    client=client,
    body=SegmentByIdRequest(image_id=as_json.image_id, prompts=[prompt], multimask=False),
)
inline = segment.sync(
    client=client,
    body=SegmentWithImageRequest(image=base64.b64encode(png).decode(), prompts=[prompt]),
)
missing = segment.sync_detailed(
    client=client, body=SegmentByIdRequest(image_id="0" * 64, prompts=[prompt])
)
assert isinstance(by_id, SegmentResponse) and isinstance(inline, SegmentResponse)
assert isinstance(missing.parsed, ErrorResponse)
print(json.dumps({
    "json": as_json.to_dict(), "file": as_file.to_dict(), "cached": int(cached),
    "by_id": by_id.to_dict(), "inline_candidates": len(inline.results[0].candidates),
    "missing": [int(missing.status_code), missing.parsed.error.code],
}))
"""


def _generator_venv() -> Path:
    python = VENV / "bin" / "python"
    if not (VENV / "bin" / "openapi-python-client").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", GENERATOR], check=True, timeout=600
        )
    return python


def test_a_generated_client_embeds_segments_and_reads_errors(
    fixture: Fixture, tmp_path: Path
) -> None:
    python = _generator_venv()
    image = tmp_path / "image.png"
    image.write_bytes(png_bytes())
    with GatewayProcess(
        {"ESAM_CHECKPOINT": str(fixture.checkpoint), "ESAM_API_KEYS": KEY}
    ) as gateway:
        headers = {"Authorization": f"Bearer {KEY}"}
        document = httpx.get(f"{gateway.url}/openapi.json", headers=headers, timeout=60).json()
        (tmp_path / "openapi.json").write_text(json.dumps(document))
        generated = subprocess.run(
            [
                str(VENV / "bin" / "openapi-python-client"),
                "generate",
                "--path",
                str(tmp_path / "openapi.json"),
                "--meta",
                "none",
                "--output-path",
                str(tmp_path / PACKAGE),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert generated.returncode == 0, generated.stdout + generated.stderr
        # the typed request bodies exist: a client cannot send both image_id and image
        models = tmp_path / PACKAGE / "models"
        assert (models / "segment_by_id_request.py").exists()
        assert "image:" not in (models / "segment_by_id_request.py").read_text()
        run = subprocess.run(
            [str(python), "-c", textwrap.dedent(SCRIPT), gateway.url, KEY, str(image)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            cwd=tmp_path,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        result = json.loads(run.stdout)
        body = {"image_id": result["json"]["image_id"], "multimask": False}
        body["prompts"] = [{"points": [[20, 12]], "labels": [1]}]
        direct = httpx.post(
            f"{gateway.url}/segment", json=body, headers=headers, timeout=300
        ).json()
    assert result["json"]["image_id"] == result["file"]["image_id"]
    assert (result["json"]["width"], result["json"]["height"]) == (64, 48)
    assert result["cached"] == 204
    assert result["by_id"]["results"] == direct["results"]
    assert result["inline_candidates"] == 3
    assert result["missing"] == [404, "embedding_not_found"]
