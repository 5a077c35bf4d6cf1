"""diffusion-pipe's two TOML files, built from seed 000's request (reference/trainers.md §1.2-1.4).

Pure: the gateway calls it at submit (so a config diffusion-pipe would reject is a 400 naming
the key, before anything runs) and the agent calls it again to write the files.
"""

from __future__ import annotations

from typing import Any

MODEL_TYPES = frozenset({
    "flux", "ltx-video", "hunyuan-video", "sdxl", "cosmos", "lumina_2", "wan", "chroma", "hidream",
    "sd3", "cosmos_predict2", "anima", "omnigen2", "qwen_image", "hunyuan_image", "auraflow",
    "z_image", "hunyuan_video_15", "flux2", "ernie_image", "ltx2", "ideogram4", "krea2", "minimax_h3",
})
DTYPES = frozenset({"float32", "float16", "bfloat16", "float8", "float8_e4m3fn", "float8_e5m2"})
ADAPTER_TYPES = frozenset({"lora", "lokr"})
SAVE_KEYS = ("save_every_n_epochs", "save_every_n_steps", "save_every_n_examples")
SET_BY_TRAINYARD = ("output_dir", "dataset")

# What a request that names none of these gets (seed 000's example names none).
DEFAULT_MODEL = {"dtype": "bfloat16"}
DEFAULT_ADAPTER = {"type": "lora", "rank": 32, "dtype": "bfloat16"}
DEFAULT_OPTIMIZER = {"type": "adamw_optimi", "lr": 2e-5, "betas": [0.9, 0.99], "weight_decay": 0.01, "eps": 1e-8}


class ConfigError(ValueError):
    """A key diffusion-pipe would reject; `key` is its dotted path in the request."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


def _no_nulls(value: Any, key: str) -> None:
    """TOML has no null: a null anywhere is refused with its path."""
    if value is None:
        raise ConfigError(key, "null is not a TOML value; leave the key out instead")
    if isinstance(value, dict):
        for k, v in value.items():
            _no_nulls(v, f"{key}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _no_nulls(v, f"{key}[{i}]")


def build_configs(model_type: str, dataset: dict[str, Any], config: dict[str, Any],
                  output_dir: str, dataset_toml: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(main TOML, dataset TOML) as dicts, or ConfigError naming the offending key."""
    if model_type not in MODEL_TYPES:
        raise ConfigError("model_type", f"unknown model type {model_type!r}; diffusion-pipe supports "
                          f"{', '.join(sorted(MODEL_TYPES))}")
    for key in SET_BY_TRAINYARD:
        if key in config:
            raise ConfigError(f"config.{key}", "set by trainyard (use the job's output_dir and dataset)")
    epochs = config.get("epochs")
    if epochs is None:
        raise ConfigError("config.epochs", "required by diffusion-pipe")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= 1_000_000:
        raise ConfigError("config.epochs", "a whole number of epochs, 1 to 1,000,000")
    main: dict[str, Any] = {k: v for k, v in config.items() if k not in ("model", "adapter", "optimizer")}
    main["output_dir"] = output_dir
    main["dataset"] = dataset_toml
    if not any(k in config for k in SAVE_KEYS):
        main["save_every_n_epochs"] = 1  # diffusion-pipe asserts one is set
    eval_datasets = config.get("eval_datasets", [])
    if not isinstance(eval_datasets, list) or any(not isinstance(e, dict) for e in eval_datasets):
        raise ConfigError("config.eval_datasets", "use tables: [{name = 'x', config = 'path.toml'}]")

    for section in ("model", "adapter", "optimizer"):
        if config.get(section) is not None and not isinstance(config[section], dict):
            raise ConfigError(f"config.{section}", "a table (a JSON object) of diffusion-pipe's keys")
    model = dict(config.get("model") or {})
    if "type" in model and model["type"] != model_type:
        raise ConfigError("config.model.type", f"differs from model_type {model_type!r}")
    main["model"] = {**DEFAULT_MODEL, **model, "type": model_type}
    if not isinstance(main["model"]["dtype"], str) or main["model"]["dtype"] not in DTYPES:
        raise ConfigError("config.model.dtype", f"one of {', '.join(sorted(DTYPES))}")

    if "adapter" not in config:
        main["adapter"] = dict(DEFAULT_ADAPTER)
    elif config["adapter"] is not None:  # null: a full fine-tune, no [adapter] table
        adapter = dict(config["adapter"])
        if "alpha" in adapter:
            raise ConfigError("config.adapter.alpha", "diffusion-pipe forces alpha = rank; remove alpha")
        if not isinstance(adapter.get("type", "lora"), str) or adapter.get("type", "lora") not in ADAPTER_TYPES:
            raise ConfigError("config.adapter.type", "lora or lokr")
        main["adapter"] = {**DEFAULT_ADAPTER, **adapter}
    main["optimizer"] = {**DEFAULT_OPTIMIZER, **(config.get("optimizer") or {})}
    _no_nulls({k: v for k, v in main.items()}, "config")

    directories = dataset.get("directories")
    if not isinstance(directories, list) or not directories:
        raise ConfigError("dataset.directories", "a list of {path, num_repeats} is required")
    tables = []
    for i, d in enumerate(directories):
        if not isinstance(d, dict) or not isinstance(d.get("path"), str) or not d["path"]:
            raise ConfigError(f"dataset.directories[{i}].path", "required")
        repeats = d.get("num_repeats", 1)
        if isinstance(repeats, bool) or not isinstance(repeats, int) or not 1 <= repeats <= 1_000_000:
            raise ConfigError(f"dataset.directories[{i}].num_repeats", "a whole number, 1 to 1,000,000")
        tables.append({"num_repeats": 1, **d})
    data: dict[str, Any] = {k: v for k, v in dataset.items() if k != "directories"}
    data.setdefault("resolutions", [512])
    data["directory"] = tables
    _no_nulls(data, "dataset")
    return main, data


def model_paths(config: dict[str, Any]) -> dict[str, str]:
    """`config.model.*_path` values: local files the gateway confines to the allowed roots."""
    model = config.get("model") or {}
    return {k: v for k, v in model.items() if k.endswith("_path") and isinstance(v, str)}
