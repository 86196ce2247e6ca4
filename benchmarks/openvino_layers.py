"""Where the time goes inside OpenVINO: per-layer performance counters of vitq's export and NNCF's.

For one tower of a full-size CLIP config (random weights), this compiles vitq's W8A8 export (with
asymmetric q/k/v, and with signed q/k/v: the default) and NNCF + OpenVINO int8 with ``PERF_COUNT``, runs each
``--repeats`` times and sums the counters by operator and by the precision the CPU plugin executed it
in (``exec_type``: ``..._I8``/``_U8`` for integer kernels). It then lists the matrix products each
graph leaves in floating point, which is what the speed table cannot show.

    python benchmarks/openvino_layers.py --model clip-vit-b32 --tower text --batch-size 1
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

from vitq import bench
from vitq.export.runtime import _OpenVinoRunner

MATMULS = ("FullyConnected", "MatMul", "Convolution", "ScaledAttn", "ScaledDotProductAttention")


def precision_of(exec_type: str) -> str:
    """``brgemm_avx512_I8`` -> ``int8``; float kernels by their float type."""
    tail = exec_type.rsplit("_", 1)[-1].upper()
    return {"I8": "int8", "U8": "int8", "I32": "int32", "F32": "f32", "BF16": "bf16", "F16": "f16"}.get(tail, tail.lower())


def profile(path, feeds: dict, repeats: int) -> list:
    """(node, type, exec type, ms per run) of every executed node, compiled as vitq runs graphs."""
    request = _OpenVinoRunner(path, PERF_COUNT="YES").compiled.create_infer_request()
    request.infer(feeds)  # warm-up: first-call allocations
    totals = collections.defaultdict(float)
    info = {}
    for _ in range(repeats):
        request.infer(feeds)
        for p in request.get_profiling_info():
            if p.status != p.Status.EXECUTED:
                continue
            totals[p.node_name] += p.real_time.total_seconds() * 1000
            info[p.node_name] = (p.node_type, p.exec_type)
    return [(name, *info[name], ms / repeats) for name, ms in totals.items()]


def summary(layers: list) -> dict:
    by_kind = collections.defaultdict(float)
    for _, node_type, exec_type, ms in layers:
        by_kind[(node_type, precision_of(exec_type))] += ms
    return dict(by_kind)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="clip-vit-b32", choices=bench.MODELS)
    p.add_argument("--tower", default="text", choices=bench.TOWERS)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=77)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--top", type=int, default=12, help="float matrix products listed per graph")
    args = p.parse_args()
    model = bench.build_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        case = bench.Case(model, args.tower, args.batch_size, args.seq_len, Path(tmp))
        graphs = {"vitq-w8a8-asymattn": bench.vitq_export(case, options={"symmetric_attention": False}),
                  "vitq-w8a8": bench.vitq_export(case, options={"symmetric_attention": True})}
        bench.build_openvino_nncf_int8(case)
        graphs["openvino-nncf-int8"] = case.workdir / f"nncf_{case.tower}.xml"
        feeds = case.feeds()
        results = {name: profile(path, feeds, args.repeats) for name, path in graphs.items()}
    kinds = sorted({k for layers in results.values() for k in summary(layers)}, key=lambda k: -max(summary(r).get(k, 0) for r in results.values()))
    names = list(results)
    print(f"\n{args.model} {args.tower} tower, batch {args.batch_size}: ms per batch by operator and executed precision "
          f"(OpenVINO PERF_COUNT, mean of {args.repeats} runs)\n")
    print("| operator | precision | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    sums = {n: summary(results[n]) for n in names}
    for kind in kinds:
        if max(s.get(kind, 0) for s in sums.values()) < 0.01:
            continue
        print(f"| {kind[0]} | {kind[1]} | " + " | ".join(f"{sums[n].get(kind, 0):.2f}" for n in names) + " |")
    print("| **total** | | " + " | ".join(f"**{sum(sums[n].values()):.2f}**" for n in names) + " |")
    print("\nKernels of the matrix products (ms per batch, node count):\n")
    for name in names:
        kernels = collections.defaultdict(lambda: [0.0, 0])
        for _, node_type, exec_type, ms in results[name]:
            if node_type.startswith(MATMULS):
                kernels[(node_type, exec_type)][0] += ms
                kernels[(node_type, exec_type)][1] += 1
        for (node_type, exec_type), (ms, count) in sorted(kernels.items(), key=lambda kv: -kv[1][0]):
            print(f"  {name:20s} {node_type:30s} {exec_type:32s} {ms:8.2f} ms  x{count}")
    for name in names:
        floats = sorted((r for r in results[name] if r[1].startswith(MATMULS) and precision_of(r[2]) != "int8"), key=lambda r: -r[3])
        print(f"\n{name}: {len(floats)} matrix products not in int8, {sum(r[3] for r in floats):.2f} ms"
              + ("; the largest:" if floats else ""))
        for node, node_type, exec_type, ms in floats[: args.top]:
            print(f"  {ms:7.3f} ms  {node_type:14s} {exec_type:28s} {node}")


if __name__ == "__main__":
    main()
