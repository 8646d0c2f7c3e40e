"""A finished trial's student as an MLflow Model in its child run: a ``torch.export`` program, loadable anywhere.

Beside the ``student/<arch>.pth`` file (``students.py``), the same weights (best
validation; under protocol paper the labelled best-test ones) are wrapped in
``method.servable.ServableStudent`` (uint8 images ``N x 3 x 32 x 32`` in, logits out,
the normalisation folded in) and logged through MLflow's PyTorch flavour in its
``pt2`` format: a ``torch.export`` archive of tensors and primitive containers that
``mlflow.pytorch.load_model`` and ``mlflow.pyfunc.load_model`` load without icd-tune,
also with ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``. The model carries a tensor
signature, an input example from the test split, and the dataset digest, teacher,
weights and metrics as metadata.

``mlflow.pytorch.log_model`` is fluent API: it reads the process-wide tracking URI
and, without a model id, the process-wide experiment. The logged model is therefore
created with the study's bound client in the study's experiment and passed in by id,
with the run id; the tracking URI is set only for the call and restored afterwards,
``MLFLOW_TRACKING_URI`` included, and no run is ever made active.

Exported at the end of the study for its best ``export_models`` trials, not in Tune's
loop per trial: see docs/benchmarks.md ("Student model export") for the cost that decided it.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterator

MODEL_TAG = "icd_tune.student_model"  # on a child run: the models:/ URI of its student's MLflow Model
MODEL_NAME = "student"
EXAMPLE_IMAGES = 4  # more than one: torch.export keeps a batch of one as a fixed size
INPUT_TEXT = "uint8 images N x 3 x 32 x 32 (RGB, 0 to 255); the training normalisation is folded into the model"
OUTPUT_TEXT = "float32 logits N x num_classes (argmax: the predicted class)"


@dataclass
class ModelContext:
    """What every exported student shares: the data's normalisation and identity, an input example."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    example: Any  # numpy uint8 (EXAMPLE_IMAGES, 3, 32, 32): the test split's first images
    dataset: dict[str, str]  # name, digest (as the runs' dataset input), sha256
    protocol: str
    teacher_tags: Any = None  # trial config -> the teacher tags lineage gives its run
    extra: dict = field(default_factory=dict)


def model_context(data, protocol: str, lineage=None) -> ModelContext:
    """From the prepare stage's ``DataBundle`` and the trials' ``lineage.TrialLineage`` (built once)."""
    from .lineage import data_sha256

    digest = lineage.datasets[0].dataset.digest if lineage is not None and lineage.datasets else None
    sha = data_sha256(data)
    return ModelContext(mean=tuple(float(v) for v in data.mean), std=tuple(float(v) for v in data.std),
                        num_classes=int(data.num_classes), example=data.test_x[:EXAMPLE_IMAGES].numpy().copy(),
                        dataset={"name": data.name, "digest": digest or sha[:16], "sha256": sha}, protocol=protocol,
                        teacher_tags=lineage.tags if lineage is not None else None)


def student_signature(num_classes: int):
    """Unnamed tensor specs (a named one makes pyfunc hand the model a dict): uint8 images in, float32 logits out."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, 3, 32, 32))]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes))]))


@contextlib.contextmanager
def fluent_tracking(tracking_uri: str) -> Iterator[None]:
    """The process-wide tracking URI set to ``tracking_uri`` for the block; before it, as it was.

    ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI`` to every process started
    later (Ray workers included), so the variable is put back exactly: restored or removed.
    """
    import mlflow

    before_env = os.environ.get("MLFLOW_TRACKING_URI")
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)
        if before_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before_env


def model_metadata(context: ModelContext, arch: str, which: str, metrics: dict[str, float],
                   teacher: dict[str, str]) -> dict[str, Any]:
    finite = {k: float(v) for k, v in sorted(metrics.items())
              if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    return {"icd_tune": {
        "student": arch, "num_classes": context.num_classes, "input": INPUT_TEXT, "output": OUTPUT_TEXT,
        "normalisation": {"mean": list(context.mean), "std": list(context.std)},
        "weights": which, "protocol": context.protocol, "dataset": dict(context.dataset),
        "teacher": dict(teacher), "metrics": finite}}


def log_student_model(client, tracking_uri: str, experiment_id: str, run_id: str, state: dict, which: str,
                      arch: str, context: ModelContext, metrics: dict[str, float],
                      teacher: dict[str, str] | None = None) -> str:
    """Exports ``state`` as the run's MLflow Model; tags the run with its URI and returns it (``models:/<id>``)."""
    import mlflow
    import mlflow.pytorch
    from mlflow.entities import LoggedModelStatus

    from ...method.servable import servable_student

    module = servable_student(arch, context.num_classes, state, context.mean, context.std)
    logged = client.create_logged_model(experiment_id, name=MODEL_NAME, source_run_id=run_id,
                                        tags={"icd_tune.student": arch})
    with fluent_tracking(tracking_uri):
        info = mlflow.pytorch.log_model(
            module, name=MODEL_NAME, serialization_format="pt2", input_example=context.example,
            signature=student_signature(context.num_classes),
            # Given, so MLflow does not start a process to infer them.
            pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
            metadata=model_metadata(context, arch, which, metrics, teacher or {}),
            run_id=run_id, model_id=logged.model_id)
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    uri = f"models:/{info.model_id}"
    client.set_tag(run_id, MODEL_TAG, uri)
    return uri


def export_trial_model(client, tracking_uri: str, experiment_id: str, run_id: str, checkpoint, checkpoint_file: str,
                       arch: str, config: dict, metrics: dict[str, float], context: ModelContext) -> str | None:
    """One trial's student from its Ray checkpoint; its existing model URI when the run has one already (resume)."""
    from .students import student_state

    existing = client.get_run(run_id).data.tags.get(MODEL_TAG)
    if existing:
        return existing
    found = student_state(checkpoint, checkpoint_file) if checkpoint is not None else None
    if found is None:
        return None
    state, which = found
    teacher = context.teacher_tags(config) if context.teacher_tags is not None else {}
    return log_student_model(client, tracking_uri, experiment_id, run_id, state, which, arch, context, metrics,
                             teacher)
