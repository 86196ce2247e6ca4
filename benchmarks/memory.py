"""Bounded memory: peak resident memory of evaluation and calibration at two data sizes.

Each measurement runs in a fresh process (``vitq eval`` / ``vitq quantize``) and reads its peak RSS
(``ru_maxrss`` of the child). Streaming passes keep only per-image outputs (a few hundred floats),
so ten times the images should cost almost no extra memory.

    python benchmarks/memory.py [--model zoo:clip-tiny]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from vitq.data import data_root


def peak_rss_mib(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd`` in a child process; its peak RSS in MiB and its wall time."""
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
            os.execvp(cmd[0], cmd)
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="zoo:clip-tiny")
    p.add_argument("--sizes", default="1000,10000")
    p.add_argument("--calib-sizes", default="64,1024")
    args = p.parse_args()
    root = data_root()
    vitq = [sys.executable, "-m", "vitq"]
    rows = []
    for n in map(int, args.sizes.split(",")):
        cmd = vitq + ["eval", "--model", args.model, "--task", "zero-shot", "--data", str(root / "tiny-imagenet-200" / "val"),
                      "--limit", str(n), "--batch-size", "64", "--quiet"]
        rss, secs = peak_rss_mib(cmd)
        rows.append(("eval zero-shot", n, rss, secs))
    for n in map(int, args.calib_sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = vitq + ["quantize", "--model", args.model, "--method", "omse", "--bits", "W8A8", "--num-calib", str(n),
                          "--calib", str(root / "tiny-imagenet-200" / "train-200-per-class.zip"), "--out", f"{tmp}/q", "--quiet"]
            rss, secs = peak_rss_mib(cmd)
        rows.append(("calibrate omse", n, rss, secs))
    print(f"\nPeak resident memory ({args.model}, one fresh process per row)\n")
    print("| job | images | peak RSS (MiB) | wall (s) |\n|---|---|---|---|")
    for job, n, rss, secs in rows:
        print(f"| {job} | {n} | {rss:.0f} | {secs:.0f} |")


if __name__ == "__main__":
    main()
