#!/usr/bin/env python
"""The GPU path in one short run: correctness, the graph step, packing, the baseline loop, projections.

    PYTHONPATH=. python3 bench/gpu_check.py                       # on a GPU, at most 4 minutes
    PYTHONPATH=. python3 bench/gpu_check.py --cpu                 # same code on the CPU, tiny sizes, < 90 s
    PYTHONPATH=. python3 bench/gpu_check.py --parts step_graph,packing --pack 1,4,8,16

Imports only the method layer (PyTorch), so it runs where Ray, Optuna and MLflow are not
installed. Each part runs under its own deadline, the run stops starting parts after its
budget (225 s on a GPU), and the JSON file is rewritten after every part, so a run cut off from
outside still reports what it finished. Exit status 1 when a correctness check fails, 2 for a
bad command line, else 0. The parts live in ``bench/gpucheck/``; in the default order:

  environment   card, driver, torch and CUDA versions
  correctness   first-step loss terms on the device (bf16 autocast, channels_last) against the
                CPU in fp32 on one fixed batch; then a short trial, every loss finite
  step_graph    resnet32x4 -> resnet8x4 ICD, batch 64: the eager and the graph step (step: graph),
                live and cached teacher, each one's terms over its first steps against the CPU in
                fp32; step times; evaluation images/s; torch.compile(mode="reduce-overhead") timed
  packing       1, 4 and 16 processes sharing the device, each running the graph step: aggregate
                images/s, per-process peak memory, the slowest process against the one alone
  baseline      the same step in a loop shaped like the published CIFAR scripts: fp32, PIL images
                through torchvision transforms, a DataLoader with 4 workers, a host read per step
  projections   one 240-epoch CIFAR-100 trial's hours (eager, graph); the 18-trial
                invariance-weight study's GPU-hours packed and by the baseline; the four targets
  fusion        B fused students (bench/fusion.py's fused_rate, where it exists) against the best packing
  step_time     eager bf16 and fp16, bf16 with the cached teacher (device copy, host lookups); the
                data pipeline's and evaluation's images/s; the eager trial's projected hours
  cache         the exact teacher-output cache built on the device and read back: same terms
  compile       the correctness check and the step time with compile: true (default mode)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

STARTED = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # icd_tune
sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpucheck

if __name__ == "__main__":
    if "--worker" in sys.argv:  # a packing worker needs its own part only, not every part's imports
        from gpucheck.packing import worker_main

        sys.exit(worker_main(sys.argv[1:]))
    from gpucheck.plan import UsageError, parse_args

    try:  # a bad command line is refused before torch is loaded
        args, names, counts = parse_args(sys.argv[1:])
    except UsageError as err:
        print(f"gpu_check: {err}", file=sys.stderr)
        sys.exit(2)
    from gpucheck.runner import run

    sys.exit(run(args, names, counts, STARTED))
