"""Evaluation: zero-shot classification, linear probe, retrieval, top-1, fidelity, size and cost.

    report = evaluate(model, "zero-shot", "…/imagenette-val-500", limit=200)
    report["metrics"]["top1"]

Every task returns the same shape of dict (it is also the JSON the CLI writes): ``task``, ``model``,
``data``, ``num_examples``, ``metrics`` (fractions in [0, 1]), ``skipped_images``, ``seconds`` and
task-specific details. Under ``torchrun`` each process evaluates its share and all return the
numbers a single process would.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import ConfigError
from . import distributed
from .classification import top1
from .cost import cost_report, model_size, compute_cost, folder_bytes
from .datasets import describe
from .fidelity import fidelity
from .linear_probe import linear_probe
from .options import EvalOptions
from .retrieval import retrieval
from .zeroshot import zero_shot

TASKS = {
    "zero-shot": zero_shot,
    "linear-probe": linear_probe,
    "retrieval": retrieval,
    "top1": top1,
    "fidelity": fidelity,
    "cost": None,  # size and FLOPs/BOPs only; needs no data
}
_ALIASES = {"zeroshot": "zero-shot", "zero_shot": "zero-shot", "linear_probe": "linear-probe", "probe": "linear-probe",
            "classification": "top1", "top-1": "top1"}


# Options that only one task reads: giving them to another task is a mistake worth naming.
_TASK_ONLY = {
    "train_data": ("linear-probe", "--train-data"),
    "train_limit": ("linear-probe", "--train-limit"),
    "probe_bits": ("linear-probe", "probe_bits"),
    "plot": ("fidelity", "--plot"),
}


def _check_conflicts(name: str, reference, options: dict) -> None:
    if reference is not None and name != "fidelity":
        raise ConfigError(f"--reference only applies to --task fidelity, not {name}",
                          hint="drop --reference, or use --task fidelity to compare with it")
    for key, (task, flag) in _TASK_ONLY.items():
        if options.get(key) is not None and name != task:
            raise ConfigError(f"{flag} only applies to --task {task}, not {name}", hint=f"drop {flag}")


def task_name(task: str) -> str:
    name = _ALIASES.get(task, task)
    if name not in TASKS:
        raise ConfigError(f"unknown task {task!r}", hint=f"use one of {', '.join(TASKS)}")
    return name


def model_name(model, spec=None) -> str:
    if isinstance(spec, (str, Path)):
        return str(spec)
    return str(getattr(model, "name_or_path", "") or getattr(getattr(model, "config", None), "_name_or_path", "")
               or type(model).__name__)


def _as_model(model):
    if isinstance(model, (str, Path)):
        from ..saving import load_any

        return load_any(str(model))
    return model


def evaluate(model, task: str, data=None, reference=None, **options) -> dict:
    """Evaluate ``model`` (a module or a model spec) on ``task`` with ``data`` (a path or a data set).

    ``reference`` is the full-precision model for ``fidelity``. Options: see :class:`EvalOptions`
    (``batch_size``, ``limit``, ``seed``, ``skip_bad``, ``templates``, ``tokenizer``, ``train_data``,
    ``cache_dir``, ``plot``, ``progress``, ``label_map``, ``cost``, …).
    """
    name = task_name(task)
    opts = EvalOptions.from_kwargs(**options)
    _check_conflicts(name, reference, options)
    if name != "cost" and data is None:
        raise ConfigError(f"task {name} needs data", hint="pass --data PATH")
    distributed.ensure_initialized()
    spec, model = model, _as_model(model)
    reference_spec, reference = reference, (_as_model(reference) if reference is not None else None)
    start = time.perf_counter()  # evaluation time, not loading time
    restore = [(m, m.training) for m in (model, reference) if m is not None]
    for m, _ in restore:
        m.eval()
    try:
        details = TASKS[name](model, data, opts, reference=reference) if TASKS[name] else {}
        result = {
            "task": name,
            "model": model_name(model, spec),
            "data": describe(data) if data is not None else None,
            "num_examples": details.pop("num_examples", 0),
            "metrics": details.pop("metrics", {}),
            "skipped_images": details.pop("skipped_images", 0),
        }
        if reference is not None:
            result["reference"] = model_name(reference, reference_spec)
        result.update(details)
        if opts.cost or name == "cost":
            folder = spec if isinstance(spec, (str, Path)) and Path(str(spec)).is_dir() else None
            result["cost"] = cost_report(model, folder)
        result["world_size"] = distributed.rank_and_world()[1]
        result["seconds"] = round(time.perf_counter() - start, 3)
    finally:
        for m, was_training in restore:
            m.train(was_training)
    return result


__all__ = ["evaluate", "EvalOptions", "TASKS", "cost_report", "model_size", "compute_cost", "folder_bytes"]
