"""One ICD trial in this process, no Ray or MLflow: ``python -m icd_tune.platform.single_trial``.

Useful to check a configuration by hand and as the in-process baseline that
the platform's overhead is measured against.
"""

from __future__ import annotations

import argparse
import json
import time

import yaml

from ..method.config import TrialConfig
from ..method.data import load_data
from ..method.teachers import get_teacher
from .metrics import EPOCH, TEST_ACC1, TRAIN_LOSS, VAL_ACC1
from .study.trials import trial_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML file with a trial config (keys of TrialConfig)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key, e.g. loss.invariance_weight=0.5 (repeatable)")
    args = parser.parse_args(argv)
    raw: dict = {}
    if args.config:
        with open(args.config) as f:
            raw = yaml.safe_load(f) or {}
    overrides = [(key, yaml.safe_load(value)) for key, _, value in (item.partition("=") for item in args.set)]
    seed = next((value for key, value in reversed(overrides) if key == "seed"), raw.get("seed", TrialConfig.seed))
    cfg = trial_config(raw, overrides, seed)
    data = load_data(cfg.data)
    teacher = None
    if cfg.uses_teacher:
        teacher, info = get_teacher(cfg.teacher, data, cfg.data, device=cfg.device)
        print(f"teacher: {json.dumps(info)}")
    from ..method.train import Trainer

    start = time.perf_counter()
    trainer = Trainer(cfg, data, teacher)
    for m in trainer.epochs():
        shown = {k: round(v, 4) for k, v in m.items() if k.startswith((TRAIN_LOSS, VAL_ACC1, TEST_ACC1))}
        print(f"epoch {m[EPOCH]}/{cfg.optim.epochs} {shown}", flush=True)
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
