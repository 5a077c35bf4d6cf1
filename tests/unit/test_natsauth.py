"""The per-role NATS permissions: one definition (shared/nats/auth.py) for `trainyard up` and
the deployment template nats.conf."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shared.ids import InvalidIdentifier
from shared.nats import auth as natsauth

NATS_CONF = Path(__file__).parents[2] / "nats.conf"


def template_users() -> dict[str, dict]:
    users = {}
    for line in NATS_CONF.read_text().splitlines():
        line = line.strip()
        if line.startswith('{"user"'):
            entry = json.loads(re.sub(r'"password": \$[A-Z0-9_]+', '"password": "env"', line))
            users[entry["user"]] = entry["permissions"]
    return users


def test_the_deployment_template_grants_exactly_what_natsauth_grants() -> None:
    users = template_users()
    assert set(users) == {"gateway", "viewer", "agent-agent-1"}
    for user, perms in users.items():
        assert perms == natsauth.permissions(user), user


def test_an_agent_may_touch_only_its_own_host() -> None:
    perms = natsauth.permissions("agent-gpu-7")
    publish = perms["publish"]["allow"]
    assert "ty.host.gpu-7.>" in publish and not any(p.startswith("ty.cmd") for p in publish)
    assert [p for p in publish if "TY_CMD" in p] == [
        "$JS.API.CONSUMER.INFO.TY_CMD.agent_gpu-7", "$JS.API.CONSUMER.MSG.NEXT.TY_CMD.agent_gpu-7",
        "$JS.ACK.TY_CMD.agent_gpu-7.>"]
    # Consumers it may create: on the code archives' stream only.
    assert {p.split(".")[4] for p in publish if ".CONSUMER.CREATE." in p} == {"OBJ_ty_workdirs"}
    assert perms["subscribe"]["allow"] == ["_INBOX_agent-gpu-7.>", "ty.rpc.gpu-7.files"]
    assert perms["allow_responses"] is True


def test_unknown_roles_and_bad_host_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        natsauth.permissions("root")
    with pytest.raises(InvalidIdentifier):
        natsauth.agent_user("../x")
    with pytest.raises(ValueError):
        natsauth.ensure_credentials(tmp_path, "agent-a.b")


def test_credentials_are_created_once_private_and_kept(tmp_path: Path) -> None:
    path = natsauth.ensure_credentials(tmp_path, "agent-a")
    first = natsauth.load_credentials(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert natsauth.load_credentials(natsauth.ensure_credentials(tmp_path, "agent-a")) == first
    assert first.inbox_prefix == "_INBOX_agent-a" and len(first.password) >= 24
    block = natsauth.authorization_block(natsauth.all_credentials(tmp_path))
    assert '"user": "agent-a"' in block and first.password in block
