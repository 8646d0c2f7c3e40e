"""What code ran a study: package versions and the git commit, recorded on runs and in the run folder."""

from __future__ import annotations

import os
import subprocess
from importlib import metadata


def package_versions() -> dict[str, str]:
    out = {}
    for name in ("icd-tune", "torch", "torchvision", "ray", "optuna", "mlflow", "pyarrow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit(cwd: str | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or os.path.dirname(__file__), capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None
