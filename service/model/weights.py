"""Download and verify the official EfficientSAM checkpoints.

The command ``python -m service.fetch_weights ti`` (or ``make weights``) uses it.
Files are verified by their git blob SHA-1 before use. A download goes
to ``<file>.part`` and is renamed into place only once verified; an
interrupted download resumes with an HTTP range request, or restarts when the
server does not support ranges.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import platformdirs
from tqdm import tqdm

from service.errors import WeightsDownloadError
from service.model.config import Variant

_BASE_URL = "https://github.com/yformer/EfficientSAM/raw/main/weights/"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class OfficialWeights:
    variant: Variant
    filename: str
    git_blob_sha1: str

    @property
    def url(self) -> str:
        return _BASE_URL + self.filename


OFFICIAL_WEIGHTS: dict[Variant, OfficialWeights] = {
    "ti": OfficialWeights(
        "ti", "efficient_sam_vitt.pt", "af883c49e33c68f01107be52df0ecad26a48355f"
    ),
    "s": OfficialWeights(
        "s", "efficient_sam_vits.pt.zip", "fa4e9f05f753e109dbde052f97d37903b833cf53"
    ),
}


def default_weights_dir() -> Path:
    """Where checkpoints go unless ``ESAM_WEIGHTS_DIR`` (a setting) says otherwise."""
    return Path(platformdirs.user_cache_dir("efficientsam-serving")) / "weights"


def git_blob_sha1(path: Path) -> str:
    """SHA-1 of ``b"blob <size>\\0" + data``: the id git gives the file."""
    digest = hashlib.sha1(  # noqa: S324 - git's object id, not a security hash
        f"blob {path.stat().st_size}\0".encode()
    )
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """One downloader per file across processes."""
    with lock_path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fetch(client: httpx.Client, url: str, part: Path, progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (resuming from its size when possible)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 416:
            return  # the partial file is already complete; verification decides
        if response.status_code not in (200, 206):
            raise WeightsDownloadError(f"download of {url} failed: HTTP {response.status_code}")
        if response.status_code == 200:
            offset = 0  # no range support: start over
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        received = offset
        with (
            part.open("ab" if offset else "wb") as fh,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
            ) as bar,
        ):
            for chunk in response.iter_bytes(_CHUNK):
                fh.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            fh.flush()
            os.fsync(fh.fileno())
        if total is not None and received < total:
            raise WeightsDownloadError(
                f"download of {url} stopped after {received} of {total} bytes; run again to resume"
            )


def download_weights(
    variant: Variant,
    directory: Path | None = None,
    *,
    url: str | None = None,
    expected_sha1: str | None = None,
    progress: bool = True,
    timeout_s: float = 60.0,
) -> Path:
    """Return the path of a verified official checkpoint, downloading it if needed.

    ``url`` and ``expected_sha1`` override the official source (mirrors, tests).
    Raises :class:`WeightsDownloadError`; never leaves an unverified file at
    the returned path.
    """
    spec = OFFICIAL_WEIGHTS[variant]
    url = url or spec.url
    expected = (expected_sha1 or spec.git_blob_sha1).lower()
    directory = directory or default_weights_dir()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / spec.filename
    part = directory / (spec.filename + ".part")

    with _exclusive(directory / (spec.filename + ".lock")):
        if target.exists():
            if git_blob_sha1(target) == expected:
                return target
            target.unlink()  # stale or tampered: fetch again
        try:
            with httpx.Client(follow_redirects=True, timeout=timeout_s) as client:
                _fetch(client, url, part, progress)
        except httpx.HTTPError as exc:
            raise WeightsDownloadError(
                f"download of {url} failed ({type(exc).__name__}: {exc}); run again to resume"
            ) from exc
        actual = git_blob_sha1(part)
        if actual != expected:
            part.unlink()
            raise WeightsDownloadError(
                f"{spec.filename}: checksum mismatch (git blob SHA-1 {actual}, "
                f"expected {expected}); the download was discarded"
            )
        os.replace(part, target)
        return target
