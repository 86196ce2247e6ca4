"""The layers of the code import only the layers below them (README "Layout"), so the core stays
usable on its own and no import cycle can form. Function-level imports count too."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "vitq"

# Lowest first. A module may import its own layer's package and anything on a lower rank.
RANKS = {
    "_version": 0, "errors": 0, "io_utils": 1, "memory": 1, "distributed": 1, "tensors": 1, "zoo": 2,
    "quant": 3, "config": 4, "nn": 4, "models": 5, "data": 6, "calib": 7, "train": 8, "methods": 9,
    "saving": 10, "eval": 11, "export": 12, "api": 13, "bench": 14, "report": 14, "vitq": 15, "commands": 16, "cli": 17, "__main__": 18,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "vitq"


def imports(path: Path) -> list[tuple[str, int]]:
    """(imported vitq module, line) for every import in ``path``, relative ones resolved."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "vitq" or (node.module is None and target.startswith("vitq")):
                found += [(f"{target}.{a.name}", node.lineno) for a in node.names]
            elif target.startswith("vitq"):
                found.append((target, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("vitq")]
    return found


def wrong_way_imports() -> list[str]:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        here = _layer(_module_name(path))
        for target, line in imports(path):
            there = _layer(target)
            if there != here and RANKS.get(there, 99) >= RANKS.get(here, -1):
                bad.append(f"{path.relative_to(ROOT.parent)}:{line} ({here}) imports {target} ({there})")
    return bad


def test_every_layer_is_ranked():
    layers = {_layer(_module_name(p)) for p in ROOT.rglob("*.py")}
    assert layers <= set(RANKS), sorted(layers - set(RANKS))


def test_no_wrong_way_imports():
    assert wrong_way_imports() == []


def test_the_check_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    """The checker itself: a function-level relative import of a higher layer is caught."""
    pkg = tmp_path / "vitq"
    (pkg / "quant").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "quant" / "__init__.py").write_text("")
    (pkg / "quant" / "bad.py").write_text("def f():\n    from ..methods import get_method\n    return get_method\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", pkg)
    assert wrong_way_imports() == ["vitq/quant/bad.py:2 (quant) imports vitq.methods (methods)"]


def test_install_hints_work_from_a_checkout():
    """vitq is not on a package index: no hint or doc may tell users to `pip install "vitq[...]"`."""
    import re

    top = ROOT.parents[1]
    files = [*ROOT.rglob("*.py"), top / "README.md", *(top / "docs").rglob("*.md")]
    offenders = [f"{p.relative_to(top)}: {m.group(0)}" for p in files for m in re.finditer(r"""pip install ['"]?vitq\[""", p.read_text())]
    assert not offenders, offenders
    from vitq.errors import install_hint

    assert 'pip install -e ".[diffusion]"' in install_hint("diffusion", "diffusers")
