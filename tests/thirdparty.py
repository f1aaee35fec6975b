"""Third-party test data, fetched at test time and pinned by hash, never kept in the repo.

Files are cached under ``$FILTERPROXY_TEST_DATA`` (default ``~/.cache/filterproxy-test-data``);
a test whose data cannot be fetched is skipped, saying why.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.request
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("FILTERPROXY_TEST_DATA", Path.home() / ".cache/filterproxy-test-data"))

#: The anthropic SDK's source release 2.16.0 on PyPI: its tests/lib/streaming/fixtures are
#: raw Messages event streams recorded from Anthropic's API.
ANTHROPIC_SDIST = (
    "https://files.pythonhosted.org/packages/e1/59/01a1d6c753dad07b2f977e39002f6ada598f3b677dbfdc1f2c8606b5118a/anthropic-2.16.0.tar.gz",
    "c6386ded247ae56db35e34a3d828229cf07847934f1cbdc7dbb696b2944b4510",
)


#: Chat Completions streams recorded from OpenAI, Azure, xAI and DeepSeek by the Vercel AI
#: SDK's tests (one chunk's JSON per line), at a pinned commit: (path, sha256).
VERCEL_AI_COMMIT = "ed857f50f112e23930b0c2dd8d532cc8bebbc911"
VERCEL_AI_CHAT_STREAMS = [
    (
        "packages/openai/src/chat/__fixtures__/openai-text.chunks.txt",
        "335190c22fe076d24f7a5b8303f5b8648505da63878403bf242570a3cf71a2f8",
    ),
    (
        "packages/openai/src/chat/__fixtures__/azure-model-router.1.chunks.txt",
        "8749f1def5069fc268dcb44d2fd4edc828d57881ae9d708de5261eea69ee68e9",
    ),
    (
        "packages/openai-compatible/src/chat/__fixtures__/xai-text.chunks.txt",
        "d8aa31e70fe813b2596df9a6275819bf9eec822f0e54b06f4506dee1be6399a4",
    ),
    (
        "packages/openai-compatible/src/chat/__fixtures__/xai-tool-call.chunks.txt",
        "aa37181ad333e81ca2febe35eb7aabf0f06e9bf55f3cf5ad0054a4c0a6e463a8",
    ),
    (
        "packages/deepseek/src/chat/__fixtures__/deepseek-reasoning.chunks.txt",
        "0e0266c9d8b474f09d612d407d2ec8e592f83c463fff9f630add563c96348894",
    ),
    (
        "packages/deepseek/src/chat/__fixtures__/deepseek-tool-call.chunks.txt",
        "dbe406adfbc232e51aff760a77c06384580b60366d1e14cce3497223d05722cf",
    ),
]


def vercel_ai_file(path: str, sha256: str) -> bytes:
    """A file of the Vercel AI SDK's repository at `VERCEL_AI_COMMIT`."""
    url = f"https://raw.githubusercontent.com/vercel/ai/{VERCEL_AI_COMMIT}/{path}"
    return pinned(url, sha256).read_bytes()


def pinned(url: str, sha256: str) -> Path:
    """The file at *url*, checked against *sha256* (downloaded once, then cached)."""
    target = CACHE / sha256 / url.rsplit("/", 1)[-1]
    if not target.exists():
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                data = response.read()
        except OSError as e:
            pytest.skip(f"cannot fetch third-party test data {url}: {e}")
        if hashlib.sha256(data).hexdigest() != sha256:
            pytest.fail(f"{url} does not have the pinned sha256 {sha256}")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        partial.write_bytes(data)
        partial.rename(target)
    return target


def archive_members(url: str, sha256: str, directory: str, suffix: str) -> dict[str, bytes]:
    """The files under *directory* ending in *suffix* in the pinned tar archive at *url*,
    by base name."""
    found = {}
    with tarfile.open(pinned(url, sha256)) as archive:
        for member in archive.getmembers():
            parts = member.name.split("/", 1)
            if len(parts) == 2 and parts[1].startswith(directory) and member.name.endswith(suffix):
                extracted = archive.extractfile(member)
                if extracted is not None:
                    found[member.name.rsplit("/", 1)[-1]] = extracted.read()
    return found
