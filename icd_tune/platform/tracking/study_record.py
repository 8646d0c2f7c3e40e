"""The study itself on its MLflow parent run: the files as written, the study as resolved, how it was started.

Logged when a parent run is created (a resumed run keeps what its first
invocation logged); a search's Optuna storage is logged when the study ends.

    study/written/<file>        the study file and each file its ``extends`` chain names, child first
    study/resolved.yaml         after ``extends`` and ``--set``, every default filled in
    study/optuna.db             a search's Optuna storage (sqlite)
    tag icd_tune.command        the command line (icd_tune.resume_command: the latest --resume's)
    params set.<key>            each ``--set KEY=VALUE`` as given
"""

from __future__ import annotations

import shlex
import tempfile
from pathlib import Path

import yaml

from ..study.definition import Study, resolved_study
from ..study.files import extends_chain, parse_override
from ..stages.run_files import OPTUNA_DB

STUDY_ARTIFACTS = "study"
WRITTEN_DIR = f"{STUDY_ARTIFACTS}/written"
RESOLVED_ARTIFACT = "resolved.yaml"
COMMAND_TAG = "icd_tune.command"
RESUME_COMMAND_TAG = "icd_tune.resume_command"  # the latest --resume's command line
SET_PREFIX = "set."


def command_line(study: Study, argv: list[str] | None) -> str:
    """The command that started the run; a run started from Python says so."""
    if argv is None:
        return f"run_study({study.source!r}) from Python" + (f", overrides {study.overrides}" if study.overrides else "")
    return shlex.join(["run_ablation.py", *argv])


def override_params(study: Study) -> dict[str, str]:
    """``set.<key>`` -> the value as typed, one per ``--set`` (a repeated key: the last one, which applied)."""
    params = {}
    for item in study.overrides:
        key, _ = parse_override(item)
        params[SET_PREFIX + key] = item.partition("=")[2]
    return params


def written_files(study: Study) -> list[tuple[str, Path]]:
    """(artifact name, file) for the study file and its ``extends`` chain; same-named files numbered by depth."""
    chain = extends_chain(Path(study.source))
    seen: set[str] = set()
    out = []
    for depth, path in enumerate(chain):
        name = path.name if path.name not in seen else f"{depth}-{path.name}"
        seen.add(name)
        out.append((name, path))
    return out


def log_study_record(client, run_id: str, study: Study, argv: list[str] | None, log_params) -> None:
    """The written files, the resolved study, the command line and the ``--set`` values on the parent run."""
    with tempfile.TemporaryDirectory() as folder:
        written = Path(folder) / "written"
        written.mkdir()
        for name, path in written_files(study):
            (written / name).write_bytes(path.read_bytes())
        client.log_artifacts(run_id, str(written), artifact_path=WRITTEN_DIR)
        resolved = Path(folder) / RESOLVED_ARTIFACT
        resolved.write_text(yaml.safe_dump(resolved_study(study), sort_keys=False))
        client.log_artifact(run_id, str(resolved), artifact_path=STUDY_ARTIFACTS)
    client.set_tag(run_id, COMMAND_TAG, command_line(study, argv)[:5000])
    params = override_params(study)
    if params:
        log_params(run_id, params)


def log_search_storage(client, run_id: str, run_folder: Path) -> bool:
    """A search's Optuna storage, as the study left it; False when the run kept none (a grid)."""
    path = Path(run_folder) / OPTUNA_DB
    if not path.is_file():
        return False
    client.log_artifact(run_id, str(path), artifact_path=STUDY_ARTIFACTS)
    return True
