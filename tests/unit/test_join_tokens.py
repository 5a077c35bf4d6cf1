"""One-time join tokens (shared/nats/join.py): a host joins once per token, within its time,
under its own name; every refusal leaves nothing behind."""

from __future__ import annotations

import os
import time
from pathlib import Path

import nkeys
import pytest

from shared.nats import join, users


def _public_nkey() -> str:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    return nkeys.from_seed(bytearray(seed)).public_key.decode()


def _state(nats_dir: Path) -> tuple[list[str], str]:
    """What a join creates: host identities, and the auth file's text."""
    auth = (nats_dir / users.AUTH_FILE).read_text() if (nats_dir / users.AUTH_FILE).exists() else ""
    return [h.host for h in users.joined_hosts(nats_dir)], auth


def test_a_token_joins_its_host_once(tmp_path: Path) -> None:
    token = join.issue(tmp_path, "gpu01")
    key = _public_nkey()
    identity = join.redeem(tmp_path, token, "gpu01", key)
    assert identity.nkey == key
    hosts, auth = _state(tmp_path)
    assert hosts == ["gpu01"] and key in auth and '"ty.rpc.gpu01.files"' in auth
    assert not list(join.tokens_dir(tmp_path).glob("*.json"))  # only its hash was kept, and it is gone
    with pytest.raises(join.JoinRefused, match="unknown or was used already"):
        join.redeem(tmp_path, token, "gpu01", _public_nkey())
    assert _state(tmp_path) == (hosts, auth)


def test_an_expired_token_another_hosts_token_and_a_bad_key_are_refused(tmp_path: Path) -> None:
    expired = join.issue(tmp_path, "gpu01", ttl_s=-1)
    with pytest.raises(join.JoinRefused, match="expired"):
        join.redeem(tmp_path, expired, "gpu01", _public_nkey())
    token = join.issue(tmp_path, "gpu01")
    with pytest.raises(join.JoinRefused, match="for host 'gpu01', not 'gpu02'"):
        join.redeem(tmp_path, token, "gpu02", _public_nkey())
    good = _public_nkey()
    for bad_key in ("SUAAAA" + "A" * 50,  # a seed, never accepted
                    "U" + "A" * 55,  # the right shape, no valid checksum
                    good[:-2] + ("AA" if good[-2:] != "AA" else "AB"),  # a key whose checksum is off
                    "N" + good[1:]):  # a server key
        with pytest.raises(join.JoinRefused, match="not a public user nkey") as bad:
            join.redeem(tmp_path, token, "gpu01", bad_key)
        assert bad.value.status == 422
    assert _state(tmp_path)[0] == []
    join.redeem(tmp_path, token, "gpu01", _public_nkey())  # still good after those refusals


def test_a_joined_host_needs_replace_and_remove_revokes(tmp_path: Path) -> None:
    join.redeem(tmp_path, join.issue(tmp_path, "gpu01"), "gpu01", _public_nkey())
    with pytest.raises(join.HostAlreadyJoined, match="--replace"):
        join.issue(tmp_path, "gpu01")
    newer = _public_nkey()
    join.redeem(tmp_path, join.issue(tmp_path, "gpu01", replace=True), "gpu01", newer)
    assert [h.nkey for h in users.joined_hosts(tmp_path)] == [newer]
    pending = join.issue(tmp_path, "gpu01", replace=True)
    assert join.remove(tmp_path, "gpu01") is True
    assert _state(tmp_path)[0] == [] and newer not in _state(tmp_path)[1]
    with pytest.raises(join.JoinRefused):  # its unused tokens went with it
        join.redeem(tmp_path, pending, "gpu01", _public_nkey())
    assert join.remove(tmp_path, "gpu01") is False


def test_identity_files_are_private(tmp_path: Path) -> None:
    join.redeem(tmp_path, join.issue(tmp_path, "gpu01"), "gpu01", _public_nkey())
    for path in [*users.hosts_dir(tmp_path).iterdir(), tmp_path / users.AUTH_FILE]:
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert time.time() - users.joined_hosts(tmp_path)[0].joined_s < 60
