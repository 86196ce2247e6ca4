"""Speed benchmark script: the same code as `vitq bench` (vitq.bench), runnable from a checkout.

    python benchmarks/speed.py --model clip-vit-b32 --batch-size 1,32 --json results/speed_b32.json
"""

import sys

from vitq.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
