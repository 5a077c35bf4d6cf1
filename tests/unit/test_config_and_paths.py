from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import AgentSettings, GatewaySettings, load_settings
from shared.paths import PathNotAllowed, confine


def test_layers_defaults_toml_env_flags(tmp_path: Path) -> None:
    toml = tmp_path / "trainyard.toml"
    toml.write_text('port = 9000\nreplica = "from-toml"\n[gateway]\nbind = "0.0.0.0"\n[agent]\nhost = "a1"\n')
    s = load_settings(GatewaySettings, toml_path=toml, section="gateway",
                      env={"TRAINYARD_REPLICA": "from-env", "TRAINYARD_ALLOWED_ROOTS": "/a:/b"},
                      overrides={"port": 9100, "data_dir": None})
    assert (s.port, s.replica, s.bind, s.allowed_roots) == (9100, "from-env", "0.0.0.0", ["/a", "/b"])
    assert s.data_dir == GatewaySettings().data_dir
    a = load_settings(AgentSettings, toml_path=toml, section="agent", env={})
    assert a.host == "a1"


@pytest.mark.parametrize("raw", ["/etc", "/data/../etc", "../x", "/data2", "/data\x00/x", "/ｄata/x"])
def test_paths_outside_roots_are_refused(raw: str) -> None:
    with pytest.raises(PathNotAllowed):
        confine(raw, ["/data"], "cwd")


def test_paths_inside_roots_are_normalised() -> None:
    assert confine("/data/a/../b", ["/data"], "cwd") == "/data/b"
    assert confine("sub/dir", ["/data"], "cwd") == "/data/sub/dir"
