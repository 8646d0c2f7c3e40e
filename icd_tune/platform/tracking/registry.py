"""The study's best student as a new version of a registered model, and the ``champion`` alias rules.

``--register NAME`` (or the study key ``register``) registers the MLflow Model of the
trial that is best on the study's validation metric (never under protocol paper,
whose numbers are selected on the test set). The version is tagged with the study,
the trial's run, the selection metric and its value, ``test/acc1_at_best_val``, the
teacher and the dataset. The alias ``champion`` moves to the new version only when
it beats the current champion on the same selection metric (and mode) and the same
dataset digest; a champion chosen on another metric or other data is not comparable,
so the alias stays and the reason is said. Works on a sqlite store and on a server.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..metrics import TEST_ACC1_AT_BEST_VAL
from .lineage import TEACHER_ARCH_TAG, TEACHER_SHA256_TAG
from .models import MODEL_TAG
from .runs import store_lock

CHAMPION = "champion"
STUDY_TAG = "icd_tune.study"
RUN_TAG = "icd_tune.run_id"
PARENT_RUN_TAG = "icd_tune.parent_run_id"
METRIC_TAG = "icd_tune.selection_metric"
MODE_TAG = "icd_tune.selection_mode"
VALUE_TAG = "icd_tune.selection_value"
TEACHER_TAG = "icd_tune.teacher"
DATASET_TAG = "icd_tune.dataset"
DIGEST_TAG = "icd_tune.dataset_digest"


@dataclass
class Candidate:
    """A trial's student as the registry sees it."""

    model_uri: str  # models:/<model id>
    run_id: str
    parent_run_id: str
    study: str
    metric: str
    mode: str
    value: float
    test_acc1: float | None
    teacher: str
    dataset: str
    digest: str

    @property
    def model_id(self) -> str:
        return self.model_uri.split("/", 1)[1]

    def tags(self) -> dict[str, str]:
        tags = {STUDY_TAG: self.study, RUN_TAG: self.run_id, PARENT_RUN_TAG: self.parent_run_id,
                METRIC_TAG: self.metric, MODE_TAG: self.mode, VALUE_TAG: repr(float(self.value)),
                TEACHER_TAG: self.teacher, DATASET_TAG: self.dataset, DIGEST_TAG: self.digest}
        if self.test_acc1 is not None:
            tags[TEST_ACC1_AT_BEST_VAL] = repr(float(self.test_acc1))
        return tags


@dataclass
class Registration:
    name: str
    version: str
    promoted: bool
    reason: str

    def lines(self) -> list[str]:
        alias = (f"alias {CHAMPION} -> version {self.version}" if self.promoted
                 else f"alias {CHAMPION} unchanged")
        return [f"registered: models:/{self.name}/{self.version} ({alias}: {self.reason})",
                f"load it:  mlflow.pyfunc.load_model('models:/{self.name}@{CHAMPION}')"]


def candidate_from_run(client, run_id: str, study: str, metric: str, mode: str) -> Candidate:
    """The registry's view of a child run that has an exported student (``models.MODEL_TAG``)."""
    run = client.get_run(run_id)
    tags, metrics = run.data.tags, run.data.metrics
    if MODEL_TAG not in tags:
        raise ValueError(f"run {run_id} has no exported student model (tag {MODEL_TAG})")
    inputs = run.inputs.dataset_inputs if run.inputs is not None else []
    dataset = inputs[0].dataset if inputs else None
    teacher = tags.get(TEACHER_ARCH_TAG, "none")
    if tags.get(TEACHER_SHA256_TAG):
        teacher += f" (sha256 {tags[TEACHER_SHA256_TAG][:16]})"
    return Candidate(model_uri=tags[MODEL_TAG], run_id=run_id, parent_run_id=tags.get("mlflow.parentRunId", ""),
                     study=study, metric=metric, mode=mode, value=float(metrics[metric]),
                     test_acc1=metrics.get(TEST_ACC1_AT_BEST_VAL), teacher=teacher,
                     dataset=dataset.name if dataset else "unknown", digest=dataset.digest if dataset else "unknown")


def champion_decision(current, candidate: Candidate) -> tuple[bool, str]:
    """(whether ``champion`` moves to the candidate, why); ``current`` the champion's ModelVersion or None."""
    if current is None:
        return True, "no champion yet"
    tags, version = current.tags, current.version
    chosen = f"{tags.get(METRIC_TAG, '?')} ({tags.get(MODE_TAG, '?')})"
    if (tags.get(METRIC_TAG), tags.get(MODE_TAG)) != (candidate.metric, candidate.mode):
        return False, (f"the champion, version {version}, was chosen on {chosen} and this one on {candidate.metric} "
                       f"({candidate.mode}): not comparable, so the alias stays")
    if tags.get(DIGEST_TAG) != candidate.digest:
        return False, (f"the champion, version {version}, was chosen on dataset digest {tags.get(DIGEST_TAG, '?')} "
                       f"and this one on {candidate.digest}: not comparable, so the alias stays")
    old = float(tags[VALUE_TAG])
    better = candidate.value > old if candidate.mode == "max" else candidate.value < old
    compared = f"{candidate.metric} {candidate.value:.4f} against {old:.4f} of version {version}"
    if better:
        return True, f"it beats the champion: {compared}"
    return False, f"it does not beat the champion ({compared}), so the alias stays"


def register_student(client, tracking_uri: str, name: str, candidate: Candidate) -> Registration:
    """A new version of ``name`` from the candidate's model; ``champion`` moved to it when it wins."""
    from mlflow.exceptions import MlflowException

    with store_lock(tracking_uri):  # two invocations registering on one sqlite store take turns
        try:
            client.get_registered_model(name)
        except MlflowException:
            try:
                client.create_registered_model(name, description="distilled students registered by icd-tune")
            except MlflowException:
                client.get_registered_model(name)  # another invocation created it first (on a server)
        # The model's own artifact location, not its models:/ URI: a sqlite registry resolves that URI through the
        # process-wide tracking URI, not this client's (MLflow's own TODO in its SqlAlchemyStore).
        source = client.get_logged_model(candidate.model_id).artifact_location
        version = client.create_model_version(name, source=source, run_id=candidate.run_id,
                                              tags=candidate.tags(), model_id=candidate.model_id)
        try:
            current = client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException:
            current = None
        promoted, reason = champion_decision(current, candidate)
        if promoted:
            client.set_registered_model_alias(name, CHAMPION, version.version)
    return Registration(name, str(version.version), promoted, reason)
