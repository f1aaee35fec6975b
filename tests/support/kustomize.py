"""kustomize, as the manifests' tests and the `podman kube play` test render
deploy/kubernetes with it.

kustomize comes with kubectl (1.27 or later: kustomize v5) or on its own; Debian's
``kubernetes-client`` (kubectl 1.20, kustomize v2.0.3) cannot render these kustomizations
(directories as resources, ``patches``, per-generator options).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"

#: Why a test that needs kustomize is skipped when there is none new enough.
MISSING = (
    "needs kustomize v4 or later: kubectl 1.27+ or kustomize on PATH "
    "(Debian's kubernetes-client, kubectl 1.20, embeds kustomize v2.0.3, too old)"
)


def kustomize_command() -> list[str] | None:
    """``kustomize build`` or ``kubectl kustomize``, whichever is new enough (v4+)."""
    kustomize = shutil.which("kustomize")
    if kustomize is not None:
        out = subprocess.run(
            [kustomize, "version"], capture_output=True, text=True, check=False
        ).stdout
        if re.search(r"\bv?([4-9]|\d\d+)\.", out):
            return [kustomize, "build"]
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        out = subprocess.run(
            [kubectl, "version", "--client", "-o", "json"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        try:
            version = json.loads(out).get("kustomizeVersion", "")
        except ValueError:
            version = ""
        if re.match(r"v?([4-9]|\d\d+)\.", version):
            return [kubectl, "kustomize"]
    return None


def render(command: list[str], kustomization: str) -> list[dict[str, Any]]:
    """The documents *command* renders from deploy/kubernetes/*kustomization*."""
    result = subprocess.run(
        [*command, str(KUBERNETES / kustomization)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{kustomization} does not render:\n{result.stderr}"
    return [d for d in yaml.safe_load_all(result.stdout) if d]
