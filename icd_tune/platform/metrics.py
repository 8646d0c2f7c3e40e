"""Metric names: what the trainer reports each epoch, what a Tune trial adds, what a study logs.

The trainer (``icd_tune.method.train``) emits the names below; the platform names
them only through this module, and a test compares ``trainer_metrics()`` with a
real epoch's output, so a renamed metric cannot drift silently.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Mapping, Optional

# The transfer linear probe's test accuracy on each target of a trial's ``transfer:`` block
# (icd_tune.method.transfer), in the trial's last report only: named beside the probe's config.
from ..method.transfer_config import TRANSFER_PREFIX, transfer_metric

if TYPE_CHECKING:
    from ..method.config import TrialConfig

EPOCH = "epoch"

TRAIN_LOSS = "train/loss"
TRAIN_ACC1 = "train/acc1"
TRAIN_LR = "train/lr"
# Only trials with an ICD head (contrastive or invariance weight > 0) report it.
TRAIN_LOGIT_SCALE = "train/logit_scale"
EPOCH_SECONDS = "time/epoch_seconds"
IMAGES_PER_SECOND = "time/images_per_second"
# Validation only when the data keeps a validation split (val_fraction > 0).
VAL_ACC1 = "val/acc1"
VAL_ACC5 = "val/acc5"
VAL_BEST_ACC1 = "val/best_acc1"
VAL_BEST_EPOCH = "val/best_epoch"
TEST_ACC1 = "test/acc1"
TEST_ACC5 = "test/acc5"
# Test accuracy at the epoch of best val/acc1: selected on validation, never on test.
TEST_ACC1_AT_BEST_VAL = "test/acc1_at_best_val"
TEST_ACC5_AT_BEST_VAL = "test/acc5_at_best_val"
# Protocol paper only (no validation split): the best test acc1 over the epochs so far and its
# epoch, as the published tables report it. Selected on the test set, and labelled so.
TEST_BEST_ACC1 = "test/best_acc1"
TEST_BEST_EPOCH = "test/best_epoch"

# Every loss term of the default method (ICD) at weights that use them all: the trainer's ce and kd,
# then ICD's own; each is reported unweighted as train/loss_<term> (a trial's own: trial_loss_terms).
ICD_LOSS_TERMS = ("ce", "kd", "contrastive", "invariance")

# Every trainer metric except ``epoch`` starts with one of these.
METRIC_PREFIXES = ("train/", "val/", "test/", "time/", TRANSFER_PREFIX)

# Added to a trial's results by the Tune trainable.
NODE_ID = "trial/node_id"
DIVERGED = "trial/diverged"
ERROR = "trial/error"

# Sampled by each trial once per epoch, of its own process and device (``system_metrics``).
SYSTEM_PREFIX = "system/"
SYSTEM_CPU_PERCENT = "system/cpu_percent"  # the trial process's CPU time over wall time; 100 = one core busy
SYSTEM_RSS_MB = "system/rss_mb"  # the trial process's resident memory
# Only where the trial trains on a CUDA device: the device's utilisation (needs NVML) and the memory
# this process's CUDA allocator holds on it.
SYSTEM_GPU_UTILIZATION = "system/gpu_utilization_percent"
SYSTEM_GPU_MEMORY_MB = "system/gpu_memory_mb"
SYSTEM_METRICS = (SYSTEM_CPU_PERCENT, SYSTEM_RSS_MB, SYSTEM_GPU_UTILIZATION, SYSTEM_GPU_MEMORY_MB)

# Ray Tune's own result counter: the step when a result carries no epoch.
TRAINING_ITERATION = "training_iteration"

# Logged on a study's MLflow parent run.
STUDY_WALL_SECONDS = "study/wall_seconds"
BEST_PREFIX = "best/"
IMPORTANCE_PREFIX = "importance/"  # importance/<evaluator>/<key>: a varied key's share (report/importance.py)


def loss_term(term: str) -> str:
    return f"{TRAIN_LOSS}_{term}"


def trainer_metrics(loss_terms: Iterable[str] = ICD_LOSS_TERMS,
                    method_metrics: Iterable[str] = (TRAIN_LOGIT_SCALE,)) -> tuple[str, ...]:
    """Every name one epoch of the trainer can report, with these loss terms and the method's own figures.

    The defaults are those of the default method, ICD, at weights that use all of its terms.
    """
    return (TRAIN_LOSS, *(loss_term(t) for t in loss_terms), TRAIN_ACC1, TRAIN_LR, *method_metrics,
            EPOCH_SECONDS, IMAGES_PER_SECOND, VAL_ACC1, VAL_ACC5, VAL_BEST_ACC1, VAL_BEST_EPOCH, TEST_ACC1,
            TEST_ACC5, TEST_ACC1_AT_BEST_VAL, TEST_ACC5_AT_BEST_VAL, TEST_BEST_ACC1, TEST_BEST_EPOCH, EPOCH)


TRAINER_METRICS = trainer_metrics()


# Reported only on epochs that evaluate (every ``eval_every`` epochs and the last).
EVALUATED_PREFIXES = ("val/", "test/")
# Reported only when the data keeps a validation split, though named test/: they follow val/acc1.
NEEDS_VALIDATION = (TEST_ACC1_AT_BEST_VAL, TEST_ACC5_AT_BEST_VAL)
# Reported only under protocol paper.
PAPER_ONLY = (TEST_BEST_ACC1, TEST_BEST_EPOCH)


def trial_metrics(cfg: "TrialConfig") -> tuple[str, ...]:
    """Every name one epoch of a trial with this config reports: its loss terms, its method's own figures, the splits."""
    from ..method.data import val_size
    from ..method.distillers import get_method

    method = get_method(cfg.method)
    has_val = val_size(cfg.data) > 0
    return tuple(name for name in trainer_metrics(trial_loss_terms(cfg), method.metric_names(cfg.loss))
                 if (has_val or not (name.startswith("val/") or name in NEEDS_VALIDATION))
                 and (cfg.protocol == "paper" or name not in PAPER_ONLY))


def trial_loss_terms(cfg: "TrialConfig") -> tuple[str, ...]:
    """A trial's loss terms in the order the trainer sums them: the trainer's ce (and kd), then the method's."""
    from ..method.distillers import get_method

    return ("ce", *(("kd",) if cfg.uses_teacher else ()), *get_method(cfg.method).loss_terms(cfg.loss))


def transfer_metrics(cfg: "TrialConfig") -> tuple[str, ...]:
    """What a trial's probe reports after its last epoch: one accuracy per target set; () without ``transfer:``."""
    return tuple(transfer_metric(d) for d in cfg.transfer.datasets) if cfg.transfer is not None else ()


def metric_direction(name: str) -> Optional[str]:
    """``max`` or ``min`` for a name that measures quality or cost; None for one that selects nothing (lr, epoch)."""
    if name.endswith(("/acc1", "/acc5", "_acc1", "_acc5", "acc1_at_best_val", "acc5_at_best_val")):
        return "max"
    if name.startswith(TRAIN_LOSS) or name == EPOCH_SECONDS:
        return "min"
    if name == IMAGES_PER_SECOND:
        return "max"
    return None


def is_trainer_metric(name: str) -> bool:
    """True for the trainer's slash-named metrics (``epoch`` aside), false for Ray's and the trial's own."""
    return name.startswith(METRIC_PREFIXES)


def is_logged_metric(name: str) -> bool:
    """True for what a child run logs each epoch: the trainer's metrics and the trial's system samples."""
    return is_trainer_metric(name) or name.startswith(SYSTEM_PREFIX)


def result_step(result: Mapping) -> int:
    """The epoch a Tune result reports, else Ray's iteration count (results of other trainables)."""
    return int(result.get(EPOCH, result.get(TRAINING_ITERATION, 0)))


def epochs_done(result: Mapping) -> int:
    """The epoch a trial's last result reached; 0 when it reported none."""
    return int(result.get(EPOCH, 0) or 0)
