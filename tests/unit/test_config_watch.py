"""`filterproxy.server.watch`: what counts as a change of the config's files, on a clock."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet.task import Clock

from filterproxy.server.watch import ConfigWatch, fingerprint


def test_a_fingerprint_follows_symlinks_and_notes_missing_files(tmp_path: Path) -> None:
    first = tmp_path / "a.yaml"
    first.write_text("one")
    link = tmp_path / "config.yaml"
    link.symlink_to(first.name)
    before = fingerprint([str(link), str(tmp_path / "missing")])
    assert before[1] == (str(tmp_path / "missing"), None)
    assert before == fingerprint([str(link), str(tmp_path / "missing")])
    # Same size, same content length: a new file swapped in is still a change.
    second = tmp_path / "b.yaml"
    second.write_text("two")
    new_link = tmp_path / "new"
    new_link.symlink_to(second.name)
    os.replace(new_link, link)
    assert fingerprint([str(link), str(tmp_path / "missing")]) != before


def test_the_watch_reloads_once_per_change_and_follows_the_files_a_reload_names(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("v1")
    keys = tmp_path / "keys.yaml"
    keys.write_text("k1")
    watched = [str(config)]
    reloads: list[str] = []

    def reload() -> str | None:
        reloads.append(config.read_text())
        if config.read_text() == "v2":
            watched.append(str(keys))  # the new config names a keys_file
        return None

    clock = Clock()
    watch = ConfigWatch(clock, 1.0, lambda: tuple(watched), reload)
    watch.start()
    clock.advance(1)
    assert reloads == []
    config.write_text("v2")
    clock.advance(1)
    assert reloads == ["v2"]
    clock.advance(1)
    assert reloads == ["v2"]  # nothing changed since
    keys.write_text("k2 longer")
    clock.advance(1)
    assert reloads == ["v2", "v2"]  # a change of the keys file reloads too
    watch.stop()
    config.write_text("v3 after stop")
    clock.advance(5)
    assert reloads == ["v2", "v2"]
