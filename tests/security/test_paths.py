"""Every path the trainer will open is confined (security review M3): each of 26 traversal forms
is refused in every path-bearing key of every trainer, incl. the keys the review found open
(hf `--output_dir`-style args, diffusion-pipe `mask_path`, `merge_adapters`,
`init_from_existing`, `eval_datasets[].config`); swift `extra_args` flags that name files or
import code are an admin's; nothing is stored for a refused request."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from gateway.api.auth import TOKENS_FILE, TokenStore
from tests.conftest import TRAINERS, WORKSPACE, Cluster
from tests.integration.test_trainers import traversal_forms

SCRIPT = str(TRAINERS / "numbered.py")
DP: dict = {"trainer": "diffusion-pipe", "model_type": "flux", "config": {"epochs": 1},
            "dataset": {"directories": [{"path": str(WORKSPACE)}]}}


def _dp_dir(**extra: str) -> dict:
    return {**DP, "dataset": {"directories": [{"path": str(WORKSPACE), **extra}]}}


def _dp_config(**extra: object) -> dict:
    return {**DP, "config": {"epochs": 1, **extra}}


def _absolute(form: str) -> bool:
    return form.startswith("/") or form.startswith(str(WORKSPACE))


def _any(form: str) -> bool:
    return True


def _dotted(form: str) -> bool:  # relative ones count as paths only with a `..` segment or prefix
    return _absolute(form) or form.startswith(("./", "../")) or "/../" in form


# (request with the path in one key, the field the 422 names, which forms are paths there)
KEYS: list[tuple[Callable[[str], dict], str, Callable[[str], bool]]] = [
    (lambda p: {"trainer": "hf", "script": p if p.startswith("/") else f"{WORKSPACE}/{p}"}, "script", _any),
    (lambda p: {"trainer": "hf", "script": SCRIPT, "cwd": p}, "cwd", _any),
    (lambda p: {"trainer": "hf", "script": SCRIPT, "args": ["--output_dir", p]}, "args[1]", _absolute),
    (lambda p: {"trainer": "hf", "script": SCRIPT, "args": [f"--logging_dir={p}"]}, "args[0]", _absolute),
    (lambda p: {"trainer": "hf", "script": SCRIPT, "args": ["--deepspeed", p]}, "args[1]", _absolute),
    (lambda p: {"trainer": "swift", "model_path": p, "data_path": "d"}, "model_path", _dotted),
    (lambda p: {"trainer": "swift", "model_path": "m", "data_path": p}, "data_path", _dotted),
    (lambda p: {"trainer": "swift", "model_path": "m", "data_path": "d", "output_dir": p}, "output_dir", _dotted),
    (lambda p: {"trainer": "swift", "model_path": "m", "data_path": "d", "resume_from_checkpoint": p},
     "resume_from_checkpoint", _dotted),
    (lambda p: {"trainer": "swift", "model_path": "m", "data_path": "d", "extra_args": ["--output_dir", p]},
     "extra_args[0]", _any),
    (lambda p: _dp_dir(path=p), "dataset.directories[0].path", _any),
    (lambda p: _dp_dir(mask_path=p), "dataset.directories[0].mask_path", _any),
    (lambda p: _dp_config(model={"transformer_path": p}), "config.model.transformer_path", _any),
    (lambda p: _dp_config(model={"merge_adapters": [p]}), "config.model.merge_adapters[0]", _any),
    (lambda p: _dp_config(adapter={"type": "lora", "rank": 8, "init_from_existing": p}),
     "config.adapter.init_from_existing", _any),
    (lambda p: _dp_config(eval_datasets=[{"name": "e", "config": p}]), "config.eval_datasets[0].config", _any),
    (lambda p: {**DP, "output_dir": p}, "output_dir", _dotted),
]


@pytest.fixture(scope="module")
def operator(cluster: Cluster) -> httpx.Client:
    token = TokenStore(cluster.data_dir / TOKENS_FILE).create("operator", "paths-operator")
    return httpx.Client(base_url=f"{cluster.url}/api/v1/training", headers={"Authorization": f"Bearer {token}"})


@pytest.fixture(scope="module")
def forms(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    link = WORKSPACE / "link-out"
    if not link.is_symlink():
        link.symlink_to("/etc")
    found = traversal_forms(WORKSPACE, tmp_path_factory.mktemp("outside"))
    assert len(found) >= 25
    return found


@pytest.mark.parametrize(("build", "field", "applies"), KEYS, ids=[k[1] + f"#{i}" for i, k in enumerate(KEYS)])
def test_every_traversal_form_is_refused_in_every_path_key(cluster: Cluster, operator: httpx.Client,
                                                           forms: list[str], build: Callable[[str], dict],
                                                           field: str, applies: Callable[[str], bool]) -> None:
    before = cluster.api.client.get("/jobs", params={"limit": 1}).json()["total"]
    tried = [form for form in forms if applies(form)]
    assert len(tried) >= 15
    for form in tried:
        r = operator.post("/jobs", json={**build(form), "gpus": 0, "hold": True})
        assert r.status_code == 422 and r.json()["field"] == field, (form, field, r.text)
    assert cluster.api.client.get("/jobs", params={"limit": 1}).json()["total"] == before


def test_swift_flags_that_import_code_are_an_admins(cluster: Cluster, operator: httpx.Client) -> None:
    for flag in ("--custom_register_path", "--external_plugins", "--model", "--dataset", "--output_dir=/x",
                 "--deepspeed", "--resume_from_checkpoint"):
        body = {"trainer": "swift", "model_path": "m", "data_path": "d", "gpus": 0, "hold": True,
                "extra_args": ["--system", "hello", flag, "/tmp/p.py"]}
        r = operator.post("/jobs", json=body)
        assert r.status_code == 422 and r.json()["field"] == "extra_args[2]", (flag, r.text)
    ok = operator.post("/jobs", json={"trainer": "swift", "model_path": "m", "data_path": "d", "gpus": 0, "hold": True,
                                      "extra_args": ["--system", "You are helpful", "--seed", "7"]})
    assert ok.status_code == 201, ok.text
    admin = cluster.api.client.post("/jobs", json={"trainer": "swift", "model_path": "m", "data_path": "d", "gpus": 0,
                                                   "hold": True, "extra_args": ["--external_plugins", "/x.py"]})
    assert admin.status_code == 201, admin.text


def test_inside_a_root_the_new_keys_are_accepted_and_normalised(operator: httpx.Client) -> None:
    inside = f"{WORKSPACE}/sub/../masks"
    r = operator.post("/jobs", json={**_dp_dir(mask_path=inside), "gpus": 0, "hold": True})
    assert r.status_code == 201, r.text
    hf = operator.post("/jobs", json={"trainer": "hf", "script": SCRIPT, "gpus": 0, "hold": True,
                                      "args": ["--output_dir", "out/run1", f"--logging_dir={WORKSPACE}/tb"]})
    assert hf.status_code == 201, hf.text
    stored = operator.get(f"/jobs/{r.json()['job_id']}").json()["spec"]["dataset"]["directories"][0]
    assert stored["mask_path"] == str(WORKSPACE / "masks")
