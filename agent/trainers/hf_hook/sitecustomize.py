"""Exact per-step metrics from any transformers Trainer, whatever the script configured.

The `hf` trainer puts this directory first on the trainer's PYTHONPATH, so Python imports this
module at start-up (site.py). It changes nothing until `transformers.trainer` is imported; then
it adds one callback to the Trainer's default callbacks. At each `on_log` the callback prints,
on rank 0, one line on stdout:

    @trainyard-hf {"step": <state.global_step>, "total_steps": ..., "epoch": ..., "metrics": {...}}

The Trainer's own state says the step, so a point never lands on the wrong step, however
`logging_steps` was set (in code, in a config, on the command line), and the line comes before
the Trainer prints the same dict, on the same stream. The agent's parser reads these lines
(agent/trainers/parsing/trainer_parser.py) and, once it has seen one, no longer takes metrics
from the printed dicts.

Standard library only; whatever goes wrong here is swallowed: the user's script must run as if
this module were not there. An environment's own `sitecustomize` is still imported after it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import math
import os
import sys
from types import ModuleType

PREFIX = "@trainyard-hf "
_TARGET = "transformers.trainer"


def _report(state: object, logs: dict) -> str:
    metrics = {}
    for key, value in logs.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            metrics[key] = value if math.isfinite(value) else str(value)  # "nan"/"inf": kept, as text
    report = {"step": getattr(state, "global_step", None), "total_steps": getattr(state, "max_steps", None) or None,
              "epoch": getattr(state, "epoch", None), "metrics": metrics}
    return PREFIX + json.dumps(report)


def _install(module: ModuleType) -> None:
    from transformers.trainer_callback import TrainerCallback  # loaded by now: the trainer module imports it

    class TrainyardCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            try:
                if logs and getattr(state, "is_world_process_zero", True):
                    print(_report(state, logs), flush=True)
            except Exception:  # never break the user's training
                pass

        def on_save(self, args, state, control, **kwargs):
            try:  # where the Trainer saved, also when output_dir was set in code
                if getattr(state, "is_world_process_zero", True):
                    path = os.path.abspath(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))
                    print(PREFIX + json.dumps({"checkpoint": path, "step": state.global_step}), flush=True)
            except Exception:
                pass

    callbacks = getattr(module, "DEFAULT_CALLBACKS", None)
    if isinstance(callbacks, list):
        callbacks.append(TrainyardCallback)


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        try:
            _install(module)
        except Exception:
            pass


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)  # once, and so that the real finders answer
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def _chain_environment_sitecustomize() -> None:
    """Import the sitecustomize this one shadows, if the environment has one."""
    here = os.path.dirname(os.path.abspath(__file__))
    ours = sys.modules.pop("sitecustomize", None)
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    try:
        importlib.import_module("sitecustomize")
    except ImportError:
        pass
    finally:
        sys.path[:] = saved
        if ours is not None:
            sys.modules["sitecustomize"] = ours


try:
    sys.meta_path.insert(0, _Finder())
    _chain_environment_sitecustomize()
except Exception:
    pass
