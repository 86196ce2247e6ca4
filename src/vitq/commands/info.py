"""``vitq info``: the per-layer table of a quantized model folder."""

from __future__ import annotations

import argparse
import json


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("info", help="print the per-layer quantization table of a saved model",
                       description="Per quantization point: layer, role, bits, quantizer, scale range.")
    p.add_argument("folder", help="a folder written by `vitq quantize`")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    return p


def format_table(points: dict[str, dict]) -> str:
    rows = [("layer", "role", "bits", "quantizer", "scale min", "scale max")]
    fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
    for name, d in points.items():
        if d["kind"] == "uniform":
            where = "per-tensor" if d["axis"] is None else f"per-channel[{d['channels']}]"
            kind = f"uniform {'sym' if d['symmetric'] else 'asym'} {where}"
        else:
            kind = d["kind"]
        if not d.get("enabled", True):
            kind += " (off)"
        rows.append((name, str(d.get("role") or "-"), str(d["bits"]), kind, fmt(d["scale_min"]), fmt(d["scale_max"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args) -> int:
    from ..saving import verify_folder

    meta = verify_folder(args.folder) if _is_folder(args.folder) else None
    points = meta["points"]
    if args.json:
        print(json.dumps(points, indent=2))
        return 0
    info = meta["info"]
    dtype = info.get("model_dtype", "float32")
    print(f"{meta['model_class']} quantized with {info['method']} at {info['config']['bits']}"
          f"{'' if dtype == 'float32' else ' in ' + dtype} (components: {', '.join(info['components'])}; {len(points)} quantization points)")
    print(format_table(points))
    quantized = info.get("quantized") or {}
    if quantized:
        print("\nquantized tensors by role: " + "; ".join(
            f"{role} x{e['count']} at {'/'.join(map(str, e['bits']))} bits ({', '.join(e['quantizers'])})" for role, e in quantized.items()))
    recon = info.get("recon")
    if recon:
        print(format_recon(recon))
    return 0


def format_recon(recon: dict) -> str:
    """The block-reconstruction record: settings, then each unit's output MSE before and after."""
    head = (f"\nblock reconstruction after {recon['base']}: {recon['iters']} steps per block, loss {recon['loss']}, "
            f"drop_prob {recon['drop_prob']}, {recon['schedule']}")
    rows = [f"  {u['name']}: rounding of {u['weights']} weights, {u['act_scales']} step sizes; "
            f"output MSE {u['mse_before']:.4g} -> {u['mse_after']:.4g}" for u in recon.get("units", [])]
    return "\n".join([head, *rows])


def _is_folder(path) -> bool:
    from ..errors import ModelError
    from ..saving import is_saved_folder

    if not is_saved_folder(path):
        raise ModelError(f"{path} is not a vitq quantized-model folder", hint="pass a folder written by `vitq quantize`")
    return True
