"""``--workers auto``: one worker per CPU the process may keep busy — in a container, its
CPU limit, not the machine's CPUs."""

from __future__ import annotations

import pytest

from filterproxy.server.workers import usable_cpus, worker_count


@pytest.mark.parametrize(
    ("affinity", "quota", "expected"),
    [
        (8, None, 8),  # no limit: every CPU it may run on
        (8, (100_000, 100_000), 1),  # a Kubernetes limit of one CPU
        (8, (150_000, 100_000), 2),  # 1.5 CPUs: a second worker uses the half
        (8, (50_000, 100_000), 1),  # under one CPU: still one worker
        (2, (400_000, 100_000), 2),  # a quota above the CPUs it may run on
        (0, None, 1),
        (4, (0, 100_000), 4),  # a quota the kernel would not set: ignored
    ],
)
def test_usable_cpus(affinity: int, quota: tuple[int, int] | None, expected: int) -> None:
    assert usable_cpus(affinity, quota) == expected


def test_a_number_is_taken_as_it_is_and_nonsense_refused() -> None:
    assert worker_count("3") == 3
    assert worker_count("auto") >= 1
    with pytest.raises(ValueError, match="at least 1, or auto"):
        worker_count("0")
