"""``vitq export``: write a quantized folder as QDQ ONNX graphs (one per tower) for integer runtimes."""

from __future__ import annotations

import argparse

FORMATS = ("onnx", "openvino")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="export a quantized model to QDQ ONNX (image.onnx, text.onnx)",
                       description="Export a folder written by `vitq quantize` to QDQ ONNX graphs with vitq's own "
                                   "scales and zero-points; ONNX Runtime and OpenVINO run them on integer kernels.")
    p.add_argument("--model", required=True, help="a folder written by `vitq quantize` (or vitq.save)")
    p.add_argument("--format", default="onnx", help="onnx (QDQ ONNX, the default) or openvino (the same graphs, plus OpenVINO IR "
                                                       "image.xml/.bin beside them, checked against ONNX Runtime)")
    p.add_argument("--out", help="output folder (default: MODEL/onnx); gets image.onnx, text.onnx, export.json")
    p.add_argument("--towers", default="image,text", help="image, text or image,text (default: every tower the model has)")
    p.add_argument("--check", type=int, default=8, metavar="N",
                   help="before marking the export complete, run each graph in ONNX Runtime on N random inputs and "
                        "compare it with the simulated model (0: skip; default 8)")
    p.add_argument("--weight-dtype", default="auto", choices=("auto", "int8", "uint8"),
                   help="storage of 8-bit weight codes: auto (uint8 where this CPU's u8 x s8 kernels saturate, "
                        "i.e. x86 without VNNI), int8, or uint8")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args) -> int:
    from pathlib import Path

    from ..errors import ConfigError, ModelError
    from ..saving import is_saved_folder

    if args.format.lower() not in FORMATS:
        raise ConfigError(f"unknown export format {args.format!r}", hint=f"known formats: {', '.join(FORMATS)}")
    towers = [t.strip() for t in args.towers.split(",") if t.strip()]
    bad = [t for t in towers if t not in ("image", "text")]
    if bad or not towers:
        raise ConfigError(f"unknown tower {', '.join(bad) or '(none)'}", hint="use image, text or image,text")
    folder = Path(args.model)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ModelError(f"model folder {folder} {what}", hint="pass a folder written by `vitq quantize`")
    if not is_saved_folder(folder):
        raise ModelError(f"{folder} is not a vitq quantized-model folder (no vitq_config.json)",
                         hint="quantize it first: vitq quantize --model ... --out DIR, then vitq export --model DIR")
    from ..export import DEFAULT_SUBFOLDER, export_onnx
    from ..saving import load

    model = load(folder)
    out = Path(args.out) if args.out else folder / DEFAULT_SUBFOLDER
    out = export_onnx(model, out, towers=towers, progress=not args.quiet, check=args.check, weight_dtype=args.weight_dtype)
    from ..export.onnx_qdq import read_export_meta

    meta = read_export_meta(out)
    for tower, info in meta["towers"].items():
        line = f"{tower}: {out / info['file']} ({info['bytes'] / 1e6:.1f} MB, {info['weights_folded']} integer weight tensors)"
        checked = (meta.get("check") or {}).get(tower)
        if checked:
            line += (f"; ONNX Runtime vs simulation: cosine {checked['cosine_median']:.5f} median, {checked['cosine_min']:.5f} min "
                     f"over {checked['samples']} inputs; {checked['integer_kernels']} integer kernels")
            if checked["weight_only_linears"]:
                line += f", {len(checked['weight_only_linears'])} weight-only (float) linears"
        print(line)
    if args.format.lower() == "openvino":
        from ..export.openvino_ir import write_openvino_ir

        for tower, info in write_openvino_ir(model, out, list(meta["towers"])).items():
            print(f"{tower}: OpenVINO IR {out / info['files'][0]} (+ .bin); cosine to ONNX Runtime {info['cosine_to_onnxruntime_min']:.5f} min")
    from ..export.sizes import format_size_report, size_report

    print(format_size_report(size_report(model, folder, out)))
    for note in meta.get("notes", []):
        print(f"note: {note}")
    return 0
