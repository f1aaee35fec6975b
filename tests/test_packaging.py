"""The built wheel carries the twistd plugin, and an install of it alone is found by twistd."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
    )
    (built,) = out.glob("filterproxy-*.whl")
    return built


def test_wheel_contains_the_plugin_and_the_demo_config(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/filterproxy_plugin.py" in names
    assert "twisted/plugins/__init__.py" not in names
    assert "filterproxy/demo/demo.yaml" in names
    assert "filterproxy/py.typed" in names


def test_twistd_lists_filterproxy_from_an_install_of_the_wheel(wheel: Path, tmp_path: Path) -> None:
    # A fresh environment that sees this one's dependencies but not the source tree.
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
    )
    run_twistd = "import sys; from twisted.scripts.twistd import run; sys.argv = ['twistd', *sys.argv[1:]]; run()"
    result = subprocess.run(
        [python, "-c", run_twistd, "--help"], capture_output=True, text=True, cwd=tmp_path
    )
    assert "filterproxy" in result.stdout
    located = subprocess.run(
        [python, "-c", "import filterproxy; print(filterproxy.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    ).stdout
    assert located.startswith(str(site))
    check = subprocess.run(
        [python, "-c", run_twistd, "filterproxy", "--check"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "demo.yaml: OK" in check.stdout
