"""The process's registry of keys and teams (`filterproxy.extensions.keys.store`): what
the keys filter reads while its config is in force and otherwise, the keys file written
in place, and what may be changed where. Redis is exercised by
tests/integration/test_admin_keys.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from twisted.internet.task import Clock

from filterproxy.extensions.builtin import parse_config
from filterproxy.extensions.keys.config import GatewayKey, GatewayKeys, KeyLimits, Team, hash_key
from filterproxy.extensions.keys.store import (
    KeyRegistry,
    Refused,
    key_document,
    limits_document,
)
from filterproxy.filters.resources import Resources

BASE = 'clusters: {upstream: {url: "http://upstream.test"}}\n'


def registry() -> KeyRegistry:
    return KeyRegistry(Resources(clock=Clock()))


def section(text: str) -> GatewayKeys:
    found = parse_config(BASE + text, environ={}).section(GatewayKeys)
    assert found is not None
    return found


def test_the_filter_reads_the_registry_only_while_its_config_is_in_force() -> None:
    reg = registry()
    old = section(f'keys: [{{name: a, hash: "sha256:{hash_key("ka")}"}}]\n')
    new = section(f'keys: [{{name: b, hash: "sha256:{hash_key("kb")}"}}]\n')
    old_keys, new_keys = reg.keys_of(old), reg.keys_of(new)
    # Neither in force (a harness, or a config not yet activated): their own keys.
    assert set(old_keys) == {hash_key("ka")} and set(new_keys) == {hash_key("kb")}
    reg.configure(new, None)
    assert new_keys.get(hash_key("kb")).name == "b"
    reg.by_digest = {**reg.by_digest, "x": GatewayKey("run-time", "x")}
    assert new_keys.get("x").name == "run-time"  # run-time changes, without a reload
    assert old_keys.get("x") is None


def test_config_keys_are_read_only_and_without_a_store_nothing_changes() -> None:
    reg = registry()
    reg.configure(
        section(f'keys: [{{name: a, hash: "sha256:{hash_key("ka")}"}}]\nteams: [{{name: t}}]\n'),
        None,
        "gateway.yaml",
    )
    with pytest.raises(Refused) as refused:
        reg.delete_key("a")
    assert refused.value.status == 409 and "gateway.yaml" in refused.value.message
    with pytest.raises(Refused) as refused:
        reg.create_key(GatewayKey("b", hash_key("kb")))
    assert refused.value.status == 409 and "keys_file" in refused.value.message
    with pytest.raises(Refused) as refused:
        reg.delete_team("nobody")
    assert refused.value.status == 404


def test_the_keys_file_is_rewritten_in_place_and_used_at_once(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(
        f'keys: [{{name: old, hash: "sha256:{hash_key("ko")}"}}]\nteams: [{{name: t}}]\n'
    )
    keys_file.chmod(0o640)
    reg = registry()
    reg.configure(section(f"keys_file: {keys_file}\n"), None)
    results: list[object] = []
    key = GatewayKey("new", hash_key("kn"), ("m*",), KeyLimits(usd_per_day=2_500_000_000), "t")
    reg.create_key(key).addBoth(results.append)
    assert results == [None]
    written = yaml.safe_load(keys_file.read_text())
    assert [k["name"] for k in written["keys"]] == ["old", "new"]
    assert written["keys"][1] == key_document(key, digest=True)
    assert written["keys"][1]["limits"] == {"usd_per_day": 2.5}
    assert keys_file.stat().st_mode & 0o777 == 0o640
    assert reg.by_digest[hash_key("kn")] == key
    assert reg.key_names["new"].source == "file"
    with pytest.raises(Refused):
        reg.delete_team("t")  # "new" belongs to it
    reg.delete_key("old").addBoth(results.append)
    assert hash_key("ko") not in reg.by_digest
    assert [k["name"] for k in yaml.safe_load(keys_file.read_text())["keys"]] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["keys.yaml"]  # no temporary left


def test_dollar_limits_go_out_in_dollars() -> None:
    limits = KeyLimits(requests_per_minute=5, usd_per_month=10_000_000, soft_usd_per_day=3 * 10**9)
    assert limits_document(limits) == {
        "requests_per_minute": 5,
        "usd_per_month": 0.01,
        "soft_usd_per_day": 3,
    }
    assert limits_document(Team("t").limits) == {}
