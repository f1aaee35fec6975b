"""Running a piece of code in a fresh interpreter: for what a process does once (install a
reactor, import a library), which the test run's own process did long ago."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run_python(code: str, *, stderr: list[str] | None = None) -> str:
    """Run *code* (dedented) with this interpreter; its stdout, stripped. Fails the test
    when it exits non-zero; its stderr is appended to *stderr* when given."""
    result = subprocess.run(
        # -P: not the working directory first on sys.path, so that the second pass of
        # `make test` imports the compiled tree (PYTHONPATH) here too, not the source.
        [sys.executable, "-P", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    if stderr is not None:
        stderr.append(result.stderr)
    return result.stdout.strip()
