"""Several optimizers stepped as one (P4Q: SGD for the prompt, AdamW for the adapter), in the shape
the training loop and its checkpoints expect of a single ``torch.optim.Optimizer``."""

from __future__ import annotations

import torch


class MultiOptimizer:
    """``param_groups``, ``zero_grad``, ``step``, ``state_dict`` and ``load_state_dict`` over a list of
    optimizers. The state dict numbers the parameters of all of them in one sequence, so
    :mod:`vitq.train.checkpoint` stores it like any optimizer's."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        if not optimizers:
            raise ValueError("MultiOptimizer needs at least one optimizer")
        self.optimizers = list(optimizers)

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def state_dict(self) -> dict:
        state, groups, offset = {}, [], 0
        for opt in self.optimizers:
            sd = opt.state_dict()
            count = sum(len(g["params"]) for g in sd["param_groups"])
            state.update({offset + int(i): v for i, v in sd["state"].items()})
            groups += [dict(g, params=[offset + p for p in g["params"]]) for g in sd["param_groups"]]
            offset += count
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd: dict) -> None:
        groups, offset = list(sd["param_groups"]), 0
        for opt in self.optimizers:
            mine = groups[:len(opt.param_groups)]
            groups = groups[len(opt.param_groups):]
            count = sum(len(g["params"]) for g in opt.param_groups)
            state = {int(i) - offset: v for i, v in sd["state"].items() if offset <= int(i) < offset + count}
            opt.load_state_dict({"state": state, "param_groups": [dict(g, params=[p - offset for p in g["params"]]) for g in mine]})
            offset += count
