#!/usr/bin/env python
"""Run an ICD ablation or search study: python run_ablation.py ablations/invariance_weight.yaml"""

import os

# Ray binds to loopback unless told otherwise (a no-op when the user set it).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from icd_tune.platform.cli.finish import exit_now  # noqa: E402
from icd_tune.platform.cli.main import main  # noqa: E402

if __name__ == "__main__":
    exit_now(main())
