"""What a submitted job request must pass before it becomes an event: decoding (seed 002's
clients send swift jobs without naming the trainer), and paths confined to the allowed roots
(DESIGN §10), including diffusion-pipe's dataset and model files."""

from __future__ import annotations

import os
import re
from typing import Any

import msgspec

from gateway.errors import BadRequest, Forbidden, InvalidField, decode_body
from shared.diffusion_pipe_config import ConfigError, build_configs, model_paths
from shared.ids import is_valid_token
from shared.jobspec import (
    SPECS,
    TRAINERS,
    CommandJob,
    DiffusionPipeJob,
    HfJob,
    JobRequest,
    SwiftJob,
    path_args,
)
from shared.paths import PathNotAllowed, confine


class _TrainerPeek(msgspec.Struct):
    trainer: str | None = None


_peek = msgspec.json.Decoder(_TrainerPeek)
# One decoder per trainer, from the spec registry (shared/jobspec.py).
_request_decoders: dict[str, msgspec.json.Decoder[JobRequest]] = {
    name: msgspec.json.Decoder(spec) for name, spec in SPECS.items()
}


class _SwiftPeek(msgspec.Struct):
    model_path: object = None
    data_path: object = None


_swift_peek = msgspec.json.Decoder(_SwiftPeek)


def decode_job_request(body: bytes) -> JobRequest:
    trainer = decode_body(_peek, body).trainer
    if trainer is None:
        # Seed 002's clients send a swift job without naming the trainer.
        peek = _swift_peek.decode(body)
        if peek.model_path is not None or peek.data_path is not None:
            return _decode_as("swift", body)
        raise InvalidField(f"'trainer' is required (one of: {', '.join(TRAINERS)})", field="trainer")
    return _decode_as(trainer, body)


def _decode_as(trainer: str, body: bytes) -> JobRequest:
    decoder = _request_decoders.get(trainer)
    if decoder is None:
        raise InvalidField(f"unknown trainer {trainer!r}; one of: {', '.join(TRAINERS)}", field="trainer")
    return decode_body(decoder, body)


# Variables only an admin may set in a job's `env` (security review C2, M2): what makes a loader,
# an interpreter or a tool run other code (LD_PRELOAD, PYTHONWARNINGS importing a module that runs
# $BROWSER, NODE_OPTIONS, GIT_SSH_COMMAND, PAGER, ...), what picks the executable (PATH), and what
# trainyard sets itself (CUDA_VISIBLE_DEVICES: the GPUs the job was given; TRAINYARD_*).
ADMIN_ONLY_ENV_NAMES = frozenset({
    "PATH", "BROWSER", "PERL5OPT", "PERL5LIB", "PERLLIB", "RUBYOPT", "RUBYLIB", "NODE_OPTIONS",
    "NODE_PATH", "BASH_ENV", "ENV", "SHELL", "SHELLOPTS", "IFS", "PS4", "PROMPT_COMMAND", "CDPATH",
    "PAGER", "MANPAGER", "EDITOR", "VISUAL", "LESSOPEN", "LESSCLOSE", "SSH_ASKPASS", "SUDO_ASKPASS",
    "GCONV_PATH", "LOCPATH", "NLSPATH", "HOSTALIASES", "RESOLV_HOST_CONF", "TMPDIR", "HOME",
    "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CONFIG_DIRS", "XDG_DATA_DIRS", "CUDA_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "OPENSSL_CONF", "OPENSSL_ENGINES", "SSL_CERT_FILE",
    "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR",
})
ADMIN_ONLY_ENV_PREFIXES = ("LD_", "DYLD_", "PYTHON", "TRAINYARD_", "NVIDIA_", "GIT_", "PIP_", "MALLOC_",
                           "JAVA_", "_JAVA", "BASH_FUNC_", "CONDA_", "VIRTUAL_ENV", "DS_", "TORCHELASTIC_")
# Harmless Python switches an operator may still set.
ALLOWED_PYTHON_ENV = frozenset({"PYTHONHASHSEED", "PYTHONUNBUFFERED", "PYTHONIOENCODING", "PYTHONFAULTHANDLER"})


def admin_only_env(name: str) -> bool:
    """Whether only an admin may set `name` in a job's env."""
    upper = name.upper()
    if upper in ALLOWED_PYTHON_ENV:
        return False
    return upper in ADMIN_ONLY_ENV_NAMES or upper.startswith(ADMIN_ONLY_ENV_PREFIXES)


def check_request(spec: JobRequest, role: str) -> None:
    """Everything a request must pass that is not about paths: 403 for a `command` job of a
    non-admin, else 422 naming the field."""
    if spec.trainer == "command" and role != "admin":
        raise Forbidden("'command' jobs run arbitrary programs and need the admin role")
    if spec.host is not None and not is_valid_token(spec.host):
        raise InvalidField("host is not a valid host name", field="host")
    if spec.webhook_progress and not spec.webhook_url:
        raise InvalidField("webhook_progress needs a webhook_url to post to", field="webhook_progress")
    if len(set(spec.webhook_progress)) != len(spec.webhook_progress):
        raise InvalidField("webhook_progress names a percentage twice", field="webhook_progress")
    if spec.workdir and getattr(spec, "cwd", None):
        raise InvalidField("give workdir (the code travels; it runs in the run dir) or cwd (a directory on the "
                           "host), not both", field="workdir")
    _check_env(spec, role)
    _check_gpus(spec)
    _check_text(spec)
    _check_arguments(spec, role)


def _check_env(spec: JobRequest, role: str) -> None:
    """422 naming `env.NAME` for a variable the caller's role may not set."""
    if role == "admin":
        return
    for name in spec.env:
        if admin_only_env(name):
            raise InvalidField(f"env.{name} controls how programs load or which GPUs the job sees; "
                               f"only an admin may set it", field=f"env.{name}")


# Words in a swift flag that names files or directories it reads or writes, or code it imports:
# in `extra_args`, which trainyard cannot check (ms-swift imports plugins from such paths), only
# an admin may give them (security review M3). An hf script's path flags: jobspec.HF_PATH_FLAGS.
SWIFT_PATH_WORDS = ("path", "dir", "file", "plugin", "register", "dataset", "model", "checkpoint", "adapter",
                    "deepspeed", "config", "hub", "ckpt", "load", "save", "output", "resume", "template")


def _flag_name(arg: str) -> str:
    return arg.split("=", 1)[0].lower()


def _check_arguments(spec: JobRequest, role: str) -> None:
    """swift `extra_args` flags that name files or import code are an admin's (422 naming
    `extra_args[i]`)."""
    if role == "admin" or not isinstance(spec, SwiftJob):
        return
    for i, arg in enumerate(spec.extra_args):
        name = _flag_name(arg)
        if name.startswith("-") and any(word in name for word in SWIFT_PATH_WORDS):
            raise InvalidField(f"{name} names files or code swift would open; only an admin may pass it in "
                               "extra_args (use the request's own fields)", field=f"extra_args[{i}]")


# Names and descriptions are shown in lists and terminals, where control characters are escape
# sequences (security review L4): refused at submit (the stored events keep their old shape).
_CONTROL_IN_NAME = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _check_text(spec: JobRequest) -> None:
    if _CONTROL_IN_NAME.search(spec.name):
        raise InvalidField("name may not hold control characters", field="name")
    if _CONTROL_IN_TEXT.search(spec.description):
        raise InvalidField("description may not hold control characters (but tabs and newlines)",
                           field="description")


def _check_gpus(spec: JobRequest) -> None:
    """Pinned GPUs are distinct, and `gpus`, when also given, agrees with them."""
    if spec.gpu_ids and len(set(spec.gpu_ids)) != len(spec.gpu_ids):
        raise InvalidField("gpu_ids names a GPU twice", field="gpu_ids")
    if spec.gpu_ids and spec.gpus is not None and spec.gpus != len(spec.gpu_ids):
        raise InvalidField(f"gpus is {spec.gpus} but gpu_ids pins {len(spec.gpu_ids)}; give one or make them agree",
                           field="gpus")


class PathChecks:
    """Paths in requests are normalised and must lie under the allowed roots (DESIGN §10)."""

    def __init__(self, allowed_roots: list[str]) -> None:
        self.allowed_roots = allowed_roots

    def _confined(self, value: object, field: str) -> str:
        if not isinstance(value, str):
            raise InvalidField("must be a path (a string)", field=field)
        try:
            return confine(value, self.allowed_roots, field)
        except PathNotAllowed as exc:
            raise InvalidField(str(exc), field=field) from None

    def _in_job_dir(self, value: str, field: str, what: str | None = None) -> str:
        """An output path: absolute ones confined; relative ones lie in the job's own directory,
        so they may not climb out of it."""
        if os.path.isabs(value):
            return self._confined(value, field)
        if _climbs(value):
            raise InvalidField(f"a relative {what or field} may not contain '..'", field=field)
        return value

    def check(self, spec: JobRequest) -> JobRequest:
        """Paths in requests are normalised and must lie under the allowed roots (DESIGN §10).
        Hub ids (`Qwen/Qwen2.5-7B`) are not paths; a relative output dir stays inside the job's
        own directory."""
        if isinstance(spec, DiffusionPipeJob):
            return self._check_diffusion_pipe(spec)
        changes: dict[str, Any] = {}
        if isinstance(spec, (CommandJob, HfJob)) and spec.cwd is not None:
            changes["cwd"] = self._confined(spec.cwd, "cwd")
        if isinstance(spec, HfJob):
            args = self._confined_args(spec.args)
            if args != spec.args:
                changes["args"] = args
            base = changes.get("cwd")
            if os.path.isabs(spec.script):
                changes["script"] = self._confined(spec.script, "script")
            elif base is not None:
                changes["script"] = self._confined(os.path.join(base, spec.script), "script")
            elif spec.workdir:  # in the shipped code, unpacked into the run dir
                if _climbs(spec.script):
                    raise InvalidField("a script in the workdir may not contain '..'", field="script")
            else:
                raise InvalidField("script must be an absolute path, or relative to cwd or the workdir",
                                   field="script")
        if isinstance(spec, SwiftJob):
            for field in ("model_path", "data_path", "resume_from_checkpoint"):
                value = getattr(spec, field)
                # A hub id (`Qwen/Qwen2.5-7B`) never holds a `..` segment: a value that does is a path.
                if value and (os.path.isabs(value) or value.startswith(("./", "../", "~")) or _climbs(value)):
                    changes[field] = self._confined(os.path.expanduser(value), field)
            changes["output_dir"] = self._in_job_dir(spec.output_dir, "output_dir")
        return msgspec.structs.replace(spec, **changes) if changes else spec

    def _confined_args(self, args: list[str]) -> list[str]:
        """An hf script's args with the values of its path flags confined like an output path."""
        out = list(args)
        for at, flag, value in path_args(args):
            confined = self._in_job_dir(value, f"args[{at}]", flag)
            out[at] = confined if at > 0 and args[at - 1] == flag else f"{flag}={confined}"
        return out

    def _check_diffusion_pipe(self, spec: DiffusionPipeJob) -> DiffusionPipeJob:
        """Refuse (400, naming the key) what diffusion-pipe would refuse, before anything runs;
        confine every file or directory it opens: dataset directories and masks, the model's
        files, adapters to merge or start from, eval dataset configs (security review M3)."""
        try:
            build_configs(spec.model_type, spec.dataset, spec.config, "/output", "/dataset.toml")
        except ConfigError as exc:
            raise BadRequest(str(exc), field=exc.key) from None
        directories = []
        for i, d in enumerate(spec.dataset["directories"]):
            directories.append({**d, **{k: self._confined(d[k], f"dataset.directories[{i}].{k}")
                                        for k in ("path", "mask_path") if k in d}})
        config = dict(spec.config)
        if isinstance(config.get("model"), dict):
            model = {**config["model"], **{k: self._confined(v, f"config.model.{k}")
                                           for k, v in model_paths(config).items()}}
            merge = model.get("merge_adapters")
            if merge is not None:
                model["merge_adapters"] = [self._confined(m, f"config.model.merge_adapters[{i}]")
                                           for i, m in enumerate(merge if isinstance(merge, list) else [merge])]
            config["model"] = model
        adapter = config.get("adapter")
        if isinstance(adapter, dict) and "init_from_existing" in adapter:
            config["adapter"] = {**adapter, "init_from_existing": self._confined(
                adapter["init_from_existing"], "config.adapter.init_from_existing")}
        if isinstance(config.get("eval_datasets"), list):
            config["eval_datasets"] = [
                {**e, "config": self._confined(e["config"], f"config.eval_datasets[{i}].config")}
                if "config" in e else e for i, e in enumerate(config["eval_datasets"])]
        output = None if spec.output_dir is None else self._in_job_dir(spec.output_dir, "output_dir")
        return msgspec.structs.replace(spec, dataset={**spec.dataset, "directories": directories},
                                       config=config, output_dir=output)


def _climbs(path: str) -> bool:
    """A relative path with a `..` segment: it could lead out of where it is resolved."""
    return ".." in path.replace("\\", "/").split("/")
