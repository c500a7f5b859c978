"""``python -m service.fetch_weights ti|s`` (``esam-weights``, ``make weights``): download a
verified official checkpoint into the gateway's ``ESAM_WEIGHTS_DIR`` (default: the user
cache directory) and print its path, so that the file lands where the gateway will look.
The downloader itself is ``service.model.weights``; this command only adds the setting."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.errors import WeightsDownloadError
from service.model.config import VARIANTS
from service.model.weights import download_weights
from service.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Download a verified EfficientSAM checkpoint.")
    parser.add_argument("variant", choices=VARIANTS, nargs="?", default="ti")
    parser.add_argument(
        "--dir", type=Path, default=None, help="target directory (default: ESAM_WEIGHTS_DIR)"
    )
    parser.add_argument("--url", default=None, help="mirror URL instead of the official one")
    args = parser.parse_args(argv)
    try:
        path = download_weights(args.variant, args.dir or Settings().weights_dir, url=args.url)
    except WeightsDownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
