"""Training under torchrun: two processes average their gradients to the one-process weights.

Kept early in the run (file order): launching processes from a pytest process that has already
loaded every runtime (ONNX Runtime, OpenVINO, torch.compile) crashed it late in a full run on
this machine (SIGSEGV in CPython's allocator right after the launch), whether with vfork or fork.
"""

import os

import torch


def test_two_processes_train_like_one(tmp_path):
    """Under torchrun each process takes half of every batch; averaged gradients give the
    one-process weights. Launched as a fresh torchrun job, as users run it."""
    import subprocess
    import sys

    from ddp_train_worker import main as train_once

    worker = os.path.join(os.path.dirname(__file__), "ddp_train_worker.py")
    env = dict(os.environ, VITQ_DIST_BACKEND="gloo", OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    out = tmp_path / "ddp.pt"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", worker, str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    single = tmp_path / "single.pt"
    threads = torch.get_num_threads()
    try:
        train_once(str(single))  # sets one thread, as each torchrun worker does
    finally:
        torch.set_num_threads(threads)  # later tests (export checks) run with the usual threads
    a, b = torch.load(out, weights_only=True), torch.load(single, weights_only=True)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
