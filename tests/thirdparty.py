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

#: Chat Completions streams of providers whose shapes differ most, recorded by the same
#: tests at the same commit: Mistral's reasoning model (content as a list of thinking and
#: text parts) and its tool calls (no index; a GLM model's incremental ones), Groq
#: (``reasoning``, usage in ``x_groq``), Qwen on DashScope (``reasoning_content``, empty
#: ids on continuations).
VERCEL_AI_PROVIDER_STREAMS = [
    (
        "packages/mistral/src/__fixtures__/mistral-reasoning.chunks.txt",
        "9fa029be047fe9456dac707840ac8299a1c38354a294cba25b9d4c945fb9ced0",
    ),
    (
        "packages/mistral/src/__fixtures__/mistral-tool-call.chunks.txt",
        "1957bc7610a5217d72d03aae847372855c47215b55660c8c4eb56f2319cfc020",
    ),
    (
        "packages/mistral/src/__fixtures__/mistral-incremental-tool-call.chunks.txt",
        "ea71ca18884d9f0c58b18a9abc2e9ef3e23b9f698ca2897680a754c8ad0de59b",
    ),
    (
        "packages/groq/src/__fixtures__/groq-reasoning.chunks.txt",
        "2aa32938d8b32c7b96739114a415c8facf069eb7ba756256c8f28f6291d5af19",
    ),
    (
        "packages/groq/src/__fixtures__/groq-tool-call.chunks.txt",
        "bea929e37f93515e155ee151ea2a334d2965ebc9ef2f2cf98f1836030766f5da",
    ),
    (
        "packages/alibaba/src/__fixtures__/alibaba-reasoning.chunks.txt",
        "1a209f18df9e350c05c1bf02b23eef92e85e83ef0940fb0f28b126f87531f41d",
    ),
    (
        "packages/alibaba/src/__fixtures__/alibaba-tool-call.chunks.txt",
        "b77850ed2797ab097a6247eb8cb38f36d18ac0d5e1b076a3c3e26209314734ae",
    ),
]
#: Whole (non-streamed) answers of the same providers: (path, sha256).
VERCEL_AI_PROVIDER_ANSWERS = [
    (
        "packages/mistral/src/__fixtures__/mistral-reasoning.json",
        "d215a19302b4a82bb007143a9d18ac3b2748aff3a85ec9b971c3f3e1bfa529f4",
    ),
    (
        "packages/mistral/src/__fixtures__/mistral-tool-call.json",
        "33f690f7d3c99abd3c2f68538363a13e74a2ad90ed076c836f690f95185fe5bb",
    ),
    (
        "packages/groq/src/__fixtures__/groq-reasoning.json",
        "b68c4dd8c5a8bcbd5505badd15237ae0e87e608844d303a340f3a7f3d4fc9c7e",
    ),
    (
        "packages/alibaba/src/__fixtures__/alibaba-reasoning.json",
        "150378a5284232cad091e70f9cedf3fa2d3444dbcb2673d8ce95102d2459c8bb",
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
