"""Resumable passes over large data sets: finished batches are saved every few batches and a run
started again with ``--resume`` skips them. The result equals that of an uninterrupted run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from ..errors import ConfigError
from ..io_utils import atomic_write_bytes


@dataclass
class Checkpoint:
    folder: Path
    resume: bool = False
    every: int = 10  # batches between saves

    def path(self, desc: str, rank: int) -> Path:
        return self.folder / f"{desc.replace(' ', '_')}-rank{rank}.safetensors"

    def load(self, desc: str, rank: int, signature: dict) -> dict[int, tuple]:
        """Finished batches of an earlier run: batch number -> (outputs, targets, skipped)."""
        path = self.path(desc, rank)
        if not self.resume or not path.is_file():
            return {}
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            saved = json.loads((f.metadata() or {}).get("signature", "{}"))
        if saved != signature:
            raise ConfigError(
                f"checkpoint {path} belongs to another run ({saved} != {signature})",
                hint="delete the checkpoint folder, or run without --resume",
            )
        tensors = load_file(str(path))
        done: dict[int, tuple] = {}
        for key in tensors:
            if key.endswith(".targets"):
                number = int(key.split(".")[0][1:])
                outputs = tuple(tensors[f"b{number}.out{i}"] for i in range(int(tensors[f"b{number}.count"])))
                done[number] = (outputs or None, tensors[key] if outputs else None, int(tensors[f"b{number}.skipped"]))
        return done

    def save(self, desc: str, rank: int, signature: dict, local: list) -> None:
        tensors = {}
        for number, (outputs, targets, skipped) in local:
            outputs = outputs or ()
            for i, t in enumerate(outputs):
                tensors[f"b{number}.out{i}"] = t.contiguous()
            tensors[f"b{number}.targets"] = torch.as_tensor(targets if targets is not None else []).contiguous()
            tensors[f"b{number}.count"] = torch.tensor(len(outputs))
            tensors[f"b{number}.skipped"] = torch.tensor(skipped)
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path(desc, rank), save(tensors, metadata={"signature": json.dumps(signature)}))

    def clear(self, desc: str, rank: int) -> None:
        self.path(desc, rank).unlink(missing_ok=True)
