"""One training trial: a student distilled from a frozen teacher, epoch by epoch.

``Trainer.epochs()`` yields a metrics dict after every epoch; callers (the Ray
Tune trainable, the CLI, tests) decide what to do with it, e.g. checkpoint and
report. Losses and accuracies are accumulated on the device and read once per
epoch, so the step loop never waits for the host.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn as nn

from .config import TrialConfig, resolve_lr
from .data import DataBundle, Normalizer, TrainStream, eval_batches
from .device import resolve_device
from .distillers import get_method
from .distillers.base import StepInputs
from .graph_step import EpochTally, GraphStep, choose_step, give_note
from .losses import ce_loss, kd_loss
from .teacher_outputs import LiveTeacher
from .models import create_model, feature_dim

# 2: the method's own state under "method" (format 1, ICD only, kept its head under "head").
CHECKPOINT_FORMAT = 2


class DivergenceError(RuntimeError):
    """A loss term became non-finite; the trial cannot continue."""

    def __init__(self, epoch: int, step: int, term: str):
        self.epoch, self.step, self.term = epoch, step, term
        super().__init__(f"diverged at epoch {epoch}, step {step}: loss term '{term}' became non-finite")


def build_student(cfg: TrialConfig, num_classes: int) -> nn.Module:
    # The student's initialisation depends on the seed alone, so trials that share
    # a seed start from the same weights whatever factor levels they run.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return create_model(cfg.student, num_classes)


class Trainer:
    def __init__(self, cfg: TrialConfig, data: DataBundle, teacher: nn.Module | None = None,
                 device: torch.device | str | None = None, teacher_outputs: nn.Module | None = None):
        self.cfg = cfg
        self.data = data
        self.device = resolve_device(device if device is not None else cfg.device)
        self.cuda = self.device.type == "cuda"
        # bf16 keeps fp32's exponent range, so training needs no loss scaling; None trains in fp32.
        self.amp_dtype: torch.dtype | None = torch.bfloat16 if self.cuda else None
        opt = cfg.optim

        student = build_student(cfg, data.num_classes)
        if teacher_outputs is None and teacher is not None and cfg.uses_teacher:
            teacher_outputs = LiveTeacher(teacher)
        if cfg.uses_teacher and teacher_outputs is None:
            raise ValueError(f"this trial needs a teacher (loss.kd_weight > 0, or method {cfg.method}'s own terms)")
        if not cfg.uses_teacher:
            teacher_outputs = None
        if self.cuda:
            student = student.to(memory_format=torch.channels_last)
            if teacher_outputs is not None:
                teacher_outputs = teacher_outputs.to(memory_format=torch.channels_last)
        # Live and cached teacher outputs both know their feature width; a cache-fed trial has no model to ask.
        teacher_dim = getattr(teacher_outputs, "feature_dim", None)
        self.student, self.teacher = student.to(self.device), teacher_outputs
        if self.teacher is not None:
            self.teacher = self.teacher.to(self.device)
        self.method = get_method(cfg.method)(cfg.loss, feature_dim(cfg.student), teacher_dim,
                                             num_train=data.num_train, batch_size=opt.batch_size,
                                             seed=cfg.seed).to(self.device)
        # Each term's weight in the loss, in the order the terms are summed.
        weights = {"ce": cfg.loss.ce_weight, "kd": cfg.loss.kd_weight, **self.method.weights}
        self.weights = {n: weights[n] for n in trainer_terms(cfg, self.method)}
        if cfg.compile:
            self.student.forward = torch.compile(self.student.forward)
            if isinstance(self.teacher, LiveTeacher):
                self.teacher.forward = torch.compile(self.teacher.forward)
            elif self.teacher is not None:
                # A cache lookup (a gather, or a host lookup) is left out of the compiled graphs. Applied here,
                # not as a decorator: importing torch's compiler costs every process about a second.
                self.teacher.forward = torch.compiler.disable(self.teacher.forward)

        modules = [self.student, *self.method.trainable_modules()]
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=resolve_lr(opt.lr, cfg.student), momentum=opt.momentum, weight_decay=opt.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, opt.milestone_epochs(), gamma=opt.gamma)

        self.data_generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.negatives_generator = torch.Generator(device=self.device).manual_seed(cfg.seed + 1_000_003)
        self.normalizer = Normalizer(data.mean, data.std, self.device, channels_last=self.cuda)
        self.stream = TrainStream(data.train_x, data.train_y, opt.batch_size, self.device, self.data_generator,
                                  self.normalizer, augment_images=cfg.data.augment)
        self.tally = EpochTally(len(self.weights), self.device)
        # step: graph replays train_step as one CUDA graph; step_note says why a trial asking for it runs eager.
        self.step_mode, self.step_note = choose_step(cfg.step, self.device, self.teacher)
        give_note(self.step_note)
        self.graph_step = None
        if self.step_mode == "graph":
            self.graph_step = GraphStep(partial(self.train_step, cache_casts=False), self.optimizer,
                                        [self.negatives_generator], self.device)
        self.epoch = 0  # completed epochs
        self.best_val_acc1 = float("-inf")
        # Test accuracy and student weights at the epoch of best val/acc1: the honest test
        # number (selected on validation) and the weights it belongs to, without a second pass.
        self.best_val_epoch = 0
        self.test_at_best_val: dict[str, float] = {}
        self.best_student: dict | None = None
        # Under protocol paper (no validation split): the best test accuracy over epochs, as published,
        # and the weights of its epoch; selected on the test set, and labelled so wherever reported.
        self.best_test_acc1 = float("-inf")
        self.best_test_epoch = 0

    # ------------------------------------------------------------------ training

    def _autocast(self, cache_casts: bool = True):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        # A captured step must not cache casts: the cache's tensors would not outlive the capture.
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=cache_casts)

    def step_terms(self, x, y, index, variant, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The student's logits and every unweighted term of one batch: ce and kd here, then the method's own."""
        if self.method.student_features:
            logits, features = self.student(x, with_features=True)
        else:
            logits, features = self.student(x), None
        terms = {"ce": ce_loss(logits.float(), y)}
        t_logits = t_features = None
        if self.teacher is not None:
            t_logits, t_features = self.teacher(x, index, variant)
            terms["kd"] = kd_loss(logits, t_logits, self.cfg.loss.kd_temperature)
        terms.update(self.method.step(StepInputs(x, y, index, variant, logits, features, t_logits, t_features,
                                                 epoch, self.cfg.optim.epochs, self.negatives_generator)))
        return logits, terms

    def train_mode(self) -> None:
        for module in (self.student, self.method, self.teacher):
            if module is not None:
                module.train()  # a teacher stays in eval mode whatever it is told

    def train_step(self, x, y, index, variant, epoch: int, cache_casts: bool = True) -> None:
        """One optimiser step on a batch, its figures added to ``self.tally``: what ``step: graph`` captures."""
        with self._autocast(cache_casts):
            logits, terms = self.step_terms(x, y, index, variant, epoch)
        values = torch.stack([terms[n].float() for n in self.weights])
        loss = sum(w * terms[n] for n, w in self.weights.items() if w != 0)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.tally.add(values, loss, logits, y)

    def train_epoch(self) -> dict[str, float]:
        self.train_mode()
        epoch_number = self.epoch + 1
        names = list(self.weights)
        self.tally.reset()
        if self.cuda:
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        batches = self.stream.epoch(self.cfg.max_steps_per_epoch)
        if self.graph_step is not None:
            key = self.method.graph_key(epoch_number, self.cfg.optim.epochs)
            taken = self.graph_step.run_epoch(batches, epoch_number, key)
        else:
            taken = 0
            for x, y, index, variant in batches:
                self.train_step(x, y, index, variant, epoch_number)
                taken += 1
        seen = taken * self.cfg.optim.batch_size
        steps = max(1, taken)
        totals, bad_steps, correct = self.tally.read()  # the epoch's one host synchronisation
        elapsed = time.perf_counter() - start
        failing = [(s, n) for s, n in zip(bad_steps, names) if s >= 0]
        if failing or not all(map(lambda v: v == v and abs(v) != float("inf"), totals)):
            step, term = min(failing) if failing else (steps - 1, "total")
            raise DivergenceError(epoch_number, step + 1, term)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        metrics = {f"train/loss_{n}": totals[i] / steps for i, n in enumerate(names)}
        metrics["train/loss"] = totals[-1] / steps
        metrics["train/acc1"] = 100.0 * correct / max(1, seen)
        metrics["train/lr"] = lr
        metrics.update(self.method.epoch_metrics())
        metrics["time/epoch_seconds"] = elapsed
        metrics["time/images_per_second"] = seen / elapsed if elapsed > 0 else 0.0
        return metrics

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> dict[str, float]:
        self.student.eval()
        k = min(5, self.data.num_classes)
        hits = torch.zeros(2, device=self.device, dtype=torch.long)
        for x, y in eval_batches(images, labels, batch_size, self.device, self.normalizer):
            with self._autocast():
                logits = self.student(x)
            top = logits.float().topk(k, dim=1).indices
            match = top == y[:, None]
            hits[0] += match[:, 0].sum()
            hits[1] += match.any(dim=1).sum()
        n = max(1, labels.shape[0])
        acc1, acc5 = (100.0 * hits.double() / n).tolist()
        return {"acc1": acc1, "acc5": acc5}

    def run_epoch(self) -> dict[str, float]:
        metrics = self.train_epoch()
        self.epoch += 1
        last = self.epoch == self.cfg.optim.epochs
        if last or self.epoch % self.cfg.eval_every == 0:
            metrics.update(self._evaluate_splits())
        metrics["epoch"] = self.epoch
        return metrics

    def _evaluate_splits(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        has_val = self.data.val_x.shape[0] > 0
        if has_val:
            metrics.update({f"val/{k}": v for k, v in self.evaluate(self.data.val_x, self.data.val_y).items()})
        metrics.update({f"test/{k}": v for k, v in self.evaluate(self.data.test_x, self.data.test_y).items()})
        if has_val:
            if metrics["val/acc1"] > self.best_val_acc1:  # the earliest epoch wins a tie
                self.best_val_acc1, self.best_val_epoch = metrics["val/acc1"], self.epoch
                self.test_at_best_val = {k: metrics[f"test/{k}"] for k in ("acc1", "acc5")}
                # A copy: on the CPU, .cpu() would alias the weights that training goes on changing.
                self.best_student = {k: v.detach().to("cpu", copy=True) for k, v in self.student.state_dict().items()}
            metrics["val/best_acc1"] = self.best_val_acc1
            metrics["val/best_epoch"] = self.best_val_epoch
            metrics.update({f"test/{k}_at_best_val": v for k, v in self.test_at_best_val.items()})
        elif self.cfg.protocol == "paper":
            self._track_best_test(metrics["test/acc1"])
            metrics["test/best_acc1"] = self.best_test_acc1
            metrics["test/best_epoch"] = self.best_test_epoch
        return metrics

    def _track_best_test(self, acc1: float) -> None:
        if acc1 > self.best_test_acc1:  # the earliest epoch wins a tie
            self.best_test_acc1, self.best_test_epoch = acc1, self.epoch
            self.best_student = {k: v.detach().to("cpu", copy=True) for k, v in self.student.state_dict().items()}

    def epochs(self) -> Iterator[dict[str, float]]:
        while self.epoch < self.cfg.optim.epochs:
            yield self.run_epoch()

    def fit(self, callback: Callable[[dict[str, float]], None] | None = None) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for metrics in self.epochs():
            if callback is not None:
                callback(metrics)
        return metrics

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "best_val_acc1": self.best_val_acc1,
            "best_val_epoch": self.best_val_epoch,
            "test_at_best_val": dict(self.test_at_best_val),
            "best_student": self.best_student,
            "best_test_acc1": self.best_test_acc1,
            "best_test_epoch": self.best_test_epoch,
            "config": self.cfg.to_dict(),
            "student": _cpu(self.student.state_dict()),
            "method": _cpu(self.method.state_dict()),  # its own modules and buffers; no student, no teacher
            "optimizer": _cpu(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "data_rng": self.data_generator.get_state(),
            "negatives_rng": self.negatives_generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.method.load_state_dict(method_state(state, self.cfg.method))
        self.optimizer.load_state_dict(state["optimizer"])
        if self.graph_step is not None:
            self.graph_step.invalidate()  # the optimiser's state tensors are new: capture the step again
        self.scheduler.load_state_dict(state["scheduler"])
        self.data_generator.set_state(state["data_rng"])
        self.negatives_generator.set_state(state["negatives_rng"])
        self.epoch = int(state["epoch"])
        self.best_val_acc1 = float(state["best_val_acc1"])
        # Checkpoints written before best-validation tracking lack these keys.
        self.best_val_epoch = int(state.get("best_val_epoch", 0))
        self.test_at_best_val = {k: float(v) for k, v in (state.get("test_at_best_val") or {}).items()}
        self.best_student = state.get("best_student")
        self.best_test_acc1 = float(state.get("best_test_acc1", float("-inf")))
        self.best_test_epoch = int(state.get("best_test_epoch", 0))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)  # a crash mid-write never leaves a half checkpoint
        return path

    def load(self, path: str | Path) -> None:
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def trainer_terms(cfg: TrialConfig, method) -> list[str]:
    """The terms a trial sums, in order: ce, kd when it reads a teacher, then the method's own."""
    own = list(method.loss_terms(cfg.loss))
    if set(own) != set(method.weights) or {"ce", "kd"} & set(own):
        raise ValueError(f"method {cfg.method}: loss_terms {own} and weights {sorted(method.weights)} must name the "
                         f"same terms, and neither ce nor kd (the trainer's own)")
    return ["ce", *(["kd"] if cfg.uses_teacher else []), *own]


def method_state(state: dict, method: str) -> dict:
    """The method's state in a checkpoint; a format-1 checkpoint (ICD's head under "head") read as format 2."""
    version = state.get("format")
    if version == CHECKPOINT_FORMAT:
        return state["method"]
    if version == 1 and method == "icd":
        return {f"head.{k}": v for k, v in (state.get("head") or {}).items()}
    raise ValueError(f"checkpoint format {version!r}: this icd-tune reads format {CHECKPOINT_FORMAT}"
                     + (" and ICD's format 1" if version == 1 else "")
                     + "; continue the run with the icd-tune that wrote it, or start the trial afresh")


def _cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu(v) for v in obj]
    return obj
