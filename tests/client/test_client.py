"""The Python client (``client/``) and the ``esam`` command against a real gateway."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from esam_client import (
    AsyncEsamClient,
    EmbeddingNotFoundError,
    EsamClient,
    EsamError,
    Prompt,
    UnreachableError,
    decode_rle,
    image_id_of,
)
from esam_client.protocol import retry_delay
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from pycocotools import mask as mask_utils

from devtools.gateway_process import GatewayProcess
from devtools.redis_server import free_port
from tests.conftest import Fixture

pytestmark = pytest.mark.slow  # a gateway process: not in `make test-fast`

KEY = "client-test-key-0123456789"


def png(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def gateway(fixture: Fixture) -> Iterator[GatewayProcess]:
    settings = {"ESAM_CHECKPOINT": str(fixture.checkpoint), "ESAM_API_KEYS": KEY}
    with GatewayProcess(settings) as gw:
        yield gw


def uploads(gateway: GatewayProcess) -> float:
    """POST /embed requests the gateway has answered (its own metrics)."""
    text = httpx.get(f"{gateway.url}/metrics", timeout=60).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "esam_request_duration_seconds_count"
        and sample.labels.get("route") == "/embed"
    )


def direct_segment(gateway: GatewayProcess, body: dict[str, object]) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {KEY}"}
    answer: dict[str, object] = httpx.post(
        f"{gateway.url}/segment", json=body, headers=headers, timeout=120
    ).json()
    return answer


def test_rle_decoding_matches_pycocotools() -> None:
    rng = np.random.default_rng(0)
    for height, width in [(1, 1), (7, 13), (48, 64), (301, 97)]:
        mask = rng.random((height, width)) < rng.random()
        mask[: height // 2, : width // 3] = True  # long runs: multi-byte counts
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle = {"size": rle["size"], "counts": rle["counts"].decode()}
        np.testing.assert_array_equal(decode_rle(rle), mask_utils.decode(rle).astype(bool))


def test_retry_delay_honours_retry_after() -> None:
    request = httpx.Request("POST", "http://x/embed")
    busy = httpx.Response(429, headers={"Retry-After": "3"}, request=request)
    assert retry_delay(busy, 0, 0.5) == 3.0
    unavailable = httpx.Response(503, request=request)
    assert [retry_delay(unavailable, n, 0.5) for n in range(3)] == [0.5, 1.0, 2.0]
    assert retry_delay(None, 10, 0.5) == 30.0  # no answer: backoff, capped
    assert retry_delay(httpx.Response(422, request=request), 0, 0.5) is None


def test_embed_uploads_only_what_the_cache_lacks(gateway: GatewayProcess) -> None:
    data = png(1)
    with EsamClient(gateway.url, api_key=KEY) as client:
        before = uploads(gateway)
        first = client.embed(data)
        assert first.uploaded
        assert not first.cached
        assert (first.image_id, first.width, first.height) == (image_id_of(data), 64, 48)
        again = client.embed(data)
        assert again.image_id == first.image_id
        assert not again.uploaded
        assert again.cached
    assert uploads(gateway) == before + 1


def test_segment_by_id_uploads_again_once_after_eviction(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    path = tmp_path / "image.png"
    path.write_bytes(png(2))
    with EsamClient(gateway.url, api_key=KEY) as client:
        embedded = client.embed(path)
        headers = {"Authorization": f"Bearer {KEY}"}
        url = f"{gateway.url}/embeddings/{embedded.image_id}"
        deleted = httpx.delete(url, headers=headers, timeout=60)
        assert deleted.status_code == 204
        with pytest.raises(EmbeddingNotFoundError):  # by id alone: the gateway's 404
            client.segment([Prompt(points=[(20, 12)])], image_id=embedded.image_id)
        before = uploads(gateway)
        result = client.segment([Prompt(points=[(20, 12)], labels=[1])], image=path)
        assert uploads(gateway) == before + 1
    direct = direct_segment(
        gateway,
        {"image_id": embedded.image_id, "prompts": [{"points": [[20, 12]], "labels": [1]}]},
    )
    expected = direct["results"][0]["candidates"]  # type: ignore[index]
    candidates = result.results[0]
    assert [c.score for c in candidates] == [c["score"] for c in expected]
    for candidate, want in zip(candidates, expected, strict=True):
        mask = candidate.mask()
        assert mask.shape == (48, 64)
        np.testing.assert_array_equal(mask, mask_utils.decode(want["mask"]).astype(bool))
        assert int(mask.sum()) == candidate.area


def test_async_client_embeds_concurrently_and_downloads_the_embedding(
    gateway: GatewayProcess,
) -> None:
    images = [png(10 + n) for n in range(4)]

    async def run() -> tuple[list[bool], np.ndarray, int]:
        async with AsyncEsamClient(gateway.url, api_key=KEY) as client:
            results = await asyncio.gather(*(client.embed(image) for image in images))
            embedding = await client.embedding(results[0].image_id)
            found = await client.everything(image_id=results[0].image_id, points_per_side=2)
            return [r.uploaded for r in results], embedding, len(found.masks)

    uploaded, embedding, _ = asyncio.run(run())
    assert uploaded == [True] * 4
    assert embedding.shape == (1, 256, 64, 64)


def test_a_429_is_retried_after_retry_after(fixture: Fixture) -> None:
    """One segment-everything job at a time: a second one is answered 429 with
    Retry-After; the client waits and gets its answer once the first is done."""
    settings = {"ESAM_CHECKPOINT": str(fixture.checkpoint), "ESAM_MAX_EVERYTHING_JOBS": "1"}
    with GatewayProcess(settings) as gw, EsamClient(gw.url, retries=120) as client:
        image_id = client.embed(png(3, (256, 192))).image_id
        answers: list[int] = []

        def long_job() -> None:  # 16² points: seconds of decoding on this CPU
            body = {"image_id": image_id, "points_per_side": 16}
            answers.append(
                httpx.post(f"{gw.url}/segment/everything", json=body, timeout=300).status_code
            )

        thread = threading.Thread(target=long_job)
        thread.start()
        try:
            time.sleep(1.0)  # the job has the slot
            body = {"image_id": image_id, "points_per_side": 1}
            refused = httpx.post(f"{gw.url}/segment/everything", json=body)
            assert refused.status_code == 429
            assert int(refused.headers["Retry-After"]) >= 1
            started = time.monotonic()
            found = client.everything(image_id=image_id, points_per_side=1)
            assert found.image_id == image_id
            assert time.monotonic() - started >= 1.0  # it waited at least one Retry-After
        finally:
            thread.join()
        assert answers == [200]  # the long job was the one holding the slot


def test_errors_carry_the_gateways_code(gateway: GatewayProcess) -> None:
    with EsamClient(gateway.url, api_key=KEY) as client, pytest.raises(EsamError) as error:
        client.embed(b"not an image at all")
    assert (error.value.status, error.value.code) == (422, "invalid_image")
    wrong = EsamClient(gateway.url, api_key="wrong-key-0123456789")
    with wrong, pytest.raises(EsamError) as unauthorized:
        wrong.embed(png(4))
    assert unauthorized.value.code == "unauthorized"


def test_no_answer_after_the_retries_is_an_unreachable_error(tmp_path: Path) -> None:
    """Nobody listens: both clients raise ``UnreachableError`` (status 0, the transport error
    as its cause) after their retries, and ``esam embed`` reports the images it could not
    send instead of dying with a traceback."""
    url = f"http://127.0.0.1:{free_port()}"
    with EsamClient(url, retries=1, backoff_s=0.01) as client, pytest.raises(EsamError) as sync:
        client.embed(png(5))
    assert isinstance(sync.value, UnreachableError)
    assert (sync.value.status, sync.value.code) == (0, "unreachable")
    assert isinstance(sync.value.__cause__, httpx.TransportError)

    async def upload() -> None:
        async with AsyncEsamClient(url, retries=1, backoff_s=0.01) as client:
            await client.embed(png(5))

    with pytest.raises(UnreachableError):
        asyncio.run(upload())
    (tmp_path / "a.png").write_bytes(png(6))
    code, summary = esam("embed", str(tmp_path), url=url)
    assert code == 1
    failed = summary["failed"]
    assert isinstance(failed, list)
    assert [f["path"] for f in failed] == [str(tmp_path / "a.png")]
    assert "unreachable" in failed[0]["error"]


def esam(*args: str, url: str) -> tuple[int, dict[str, object]]:
    run = subprocess.run(
        [sys.executable, "-m", "esam_client.cli", *args, "--url", url, "--api-key", KEY],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.stdout, run.stderr
    summary: dict[str, object] = json.loads(run.stdout.splitlines()[-1])
    return run.returncode, summary


def test_esam_embed_precomputes_a_folder_and_a_second_run_sends_nothing(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    folder = tmp_path / "dataset"
    (folder / "sub").mkdir(parents=True)
    for n in range(5):
        (folder / ("sub" if n % 2 else "") / f"img{n}.png").write_bytes(png(100 + n))
    (folder / "notes.txt").write_text("not an image, not picked up from a folder")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff truncated")

    before = uploads(gateway)
    code, summary = esam("embed", str(folder), str(broken), "--concurrency", "4", url=gateway.url)
    assert code == 1  # one image failed
    assert summary["images"] == 6
    assert summary["uploaded"] == 5  # the broken one was sent too, and refused
    assert summary["encoded"] == 5
    failed = summary["failed"]
    assert isinstance(failed, list)
    assert [f["path"] for f in failed] == [str(broken)]
    assert "invalid_image" in failed[0]["error"]

    after_first = uploads(gateway)
    assert after_first == before + 6
    code, summary = esam("embed", f"{folder}/**/*.png", url=gateway.url)
    assert code == 0
    assert (summary["images"], summary["already_cached"], summary["uploaded"]) == (5, 5, 0)
    assert uploads(gateway) == after_first  # not one image sent


def test_esam_segment_and_everything_write_coco(gateway: GatewayProcess, tmp_path: Path) -> None:
    image = tmp_path / "image.png"
    image.write_bytes(png(7))
    out = tmp_path / "masks.json"
    run = subprocess.run(
        [sys.executable, "-m", "esam_client.cli", "segment", str(image), "--point", "20,12",
         "--point", "40,30,0", "--box", "5,5,50,40", "--out", str(out),
         "--url", gateway.url, "--api-key", KEY],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    document = json.loads(out.read_text())
    assert document["images"] == [{"id": 1, "file_name": "image.png", "width": 64, "height": 48}]
    annotations = document["annotations"]
    assert len(annotations) == 3  # the three candidates, best first
    scores = [a["score"] for a in annotations]
    assert scores == sorted(scores, reverse=True)
    for annotation in annotations:  # COCO tools read it as is
        rle = annotation["segmentation"]
        assert int(mask_utils.area(rle)) == annotation["area"]
    direct = direct_segment(
        gateway,
        {
            "image_id": image_id_of(image.read_bytes()),
            "prompts": [{"points": [[20, 12], [40, 30]], "labels": [1, 0], "box": [5, 5, 50, 40]}],
        },
    )
    expected = direct["results"][0]["candidates"]  # type: ignore[index]
    assert [a["segmentation"] for a in annotations] == [c["mask"] for c in expected]

    everything = tmp_path / "coco.json"
    code, _ = (
        subprocess.run(
            [sys.executable, "-m", "esam_client.cli", "everything", str(image),
             "--points-per-side", "4", "--pred-iou-thresh", "-1",
             "--stability-score-thresh", "0", "--out", str(everything),
             "--url", gateway.url, "--api-key", KEY],
            capture_output=True, text=True, timeout=300, check=False,
        ).returncode,
        None,
    )  # fmt: skip
    assert code == 0
    found = json.loads(everything.read_text())
    assert found["annotations"]
    assert {a["image_id"] for a in found["annotations"]} == {1}


def test_every_option_says_what_it_does_and_where_url_and_key_come_from() -> None:
    from esam_client.cli import _parser

    parser = _parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    assert set(subparsers.choices) == {"embed", "segment", "everything"}  # type: ignore[arg-type]
    for name, command in subparsers.choices.items():  # type: ignore[union-attr]
        for action in command._actions:
            assert action.help, f"esam {name} {action.option_strings or action.dest}: no help"
        text = " ".join(command.format_help().split())  # argparse wraps lines
        assert "$ESAM_URL" in text, name
        assert "$ESAM_API_KEY" in text, name
        assert "prefer the environment" in text, name  # a key in argv shows in ps
    embed_help = subparsers.choices["embed"].format_help()  # type: ignore[index]
    assert "standard input" in embed_help
    assert "--from-file" in embed_help


def test_esam_embed_reads_paths_from_standard_input_and_a_file(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    images = []
    for n in range(4):
        images.append(tmp_path / f"listed{n}.png")
        images[-1].write_bytes(png(300 + n))
    listing = tmp_path / "more.txt"
    listing.write_text(f"{images[3]}\n\n")
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "esam_client.cli", "embed", "-", "--from-file", str(listing)],
        input="\n".join(str(p) for p in images[:3]) + "\n",
        env={**_env(), "ESAM_URL": gateway.url, "ESAM_API_KEY": KEY},  # url and key from env
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.splitlines()[-1])
    assert (summary["images"], summary["uploaded"], summary["failed"]) == (4, 4, [])
    # not a terminal: plain lines (one every 10 s, one at the end), no redraws
    lines = run.stderr.strip().splitlines()
    assert "\r" not in run.stderr
    assert all(line.startswith("embed:") for line in lines), run.stderr
    assert len(lines) <= 1 + int(elapsed / 10), run.stderr
    assert "4/4" in lines[-1]
    assert "0 failed" in lines[-1]


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("ESAM_")}


def test_esam_embed_draws_a_bar_with_the_time_left_on_a_terminal(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    import os
    import pty
    import re

    for n in range(6):
        (tmp_path / f"tty{n}.png").write_bytes(png(400 + n))
    import fcntl
    import struct
    import termios

    leader, follower = pty.openpty()
    # a terminal 120 columns wide, as a real one has a size
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    chunks: list[bytes] = []

    def read_screen() -> None:  # as a terminal does, while the command runs
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the other end is closed: all read
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=read_screen, daemon=True)
    reader.start()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "esam_client.cli", "embed", str(tmp_path), "--concurrency", "1"],
            env={**_env(), "ESAM_URL": gateway.url, "ESAM_API_KEY": KEY},
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
        )
        stdout, _ = process.communicate(timeout=600)
        os.close(follower)
        reader.join(10)
    finally:
        os.close(leader)
    drawn = b"".join(chunks)
    assert process.returncode == 0
    assert json.loads(stdout.splitlines()[-1])["uploaded"] == 6  # the summary, unchanged
    screen = drawn.decode(errors="replace")
    assert "\r" in screen  # one line, redrawn
    assert "6/6" in screen
    assert "|" in screen  # the bar
    # tqdm's elapsed<remaining and the rate
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d, +[\d.]+ ?(img/s|s/img)", screen), screen
