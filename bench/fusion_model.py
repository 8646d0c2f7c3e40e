"""Horizontal fusion: B students of one architecture and one seed trained as one computation.

Under the pairing convention the trials of one seed share the student's initialisation and
the data order whatever factor level they run, so the levels of one factor for one seed see
the same batch at every step. ``FusedStudents`` trains such a group in one process: one data
stream, one augmentation, one teacher forward per step, and the students' arithmetic as one
wider computation. Each student keeps its own loss weights, its own ICD head (projections,
logit scale and bias), its own BatchNorm statistics and its own optimiser state.

How it is fused: ``torch.func``. The students' parameters and buffers are stacked along a new
leading dimension (``stack_module_state``), and one student's forward, written once with the
project's own modules (``functional_call`` on the zoo network and on the method's ``step``),
is mapped over that dimension with ``vmap``. For a batch shared by every student, vmap's
convolution rule turns the first convolution into one convolution with B times the output
channels and every later one into a grouped convolution (``groups = B``), which is HFTA's
construction without rewriting the networks.

BatchNorm is left to vmap, not rewritten: in train mode ``batch_norm`` updates its running
mean and variance in place, and vmap's batch rule accepts that when the running statistics are
batched along the same dimension as the input, which they are here (the stacked buffers go in
with ``in_dims=0``). ``functional_call`` swaps the stacked buffers into the module, so each
student's slice is updated with its own batch statistics; ``num_batches_tracked`` is a batched
in-place add. What vmap refuses is the unbatched-buffer case (one shared running mean for many
students), which never arises here. vmap's rule applies BatchNorm's scale and shift after
normalising, where the native kernel folds them into one multiply-add, so fp32 results differ
from a separate trial's in the last bit; ``tests/test_fusion.py`` explains why its exact check
runs in float64, step by step from the Trainers' own state, and checks three fp32 steps apart.

KD is written out (``kd_loss_batched``, equal to ``losses.kd_loss``): vmap has no batch rule for
``kl_div`` and would loop over the students. Under vmap, autocast misses the convolutions;
``VmapAutocast`` casts them, as the Trainer's autocast does.

Gradients: the per-student losses are summed and back-propagated once. The students share no
parameter, so the gradient of the sum with respect to student b's slice is the gradient of
student b's own loss. SGD (momentum, weight decay, one lr) is elementwise, so one optimiser
over the stacked tensors is B separate optimisers.

Scope of the prototype: methods ``icd`` with ``negatives.source: batch`` and ``ce``; the group
may differ only in the loss weights and the KD temperature (``FUSABLE_LOSS_KEYS``). Memory
negatives are refused: their draws and bank updates would need to be shared across the group
and are not vmap-safe as written.
"""

from __future__ import annotations

import contextlib
import copy
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap
from torch.overrides import TorchFunctionMode

from icd_tune.method.config import TrialConfig, resolve_lr
from icd_tune.method.data import DataBundle, Normalizer, TrainStream
from icd_tune.method.device import resolve_device
from icd_tune.method.distillers import get_method
from icd_tune.method.distillers.base import StepInputs
from icd_tune.method.losses import ce_loss
from icd_tune.method.models import feature_dim
from icd_tune.method.teacher_outputs import LiveTeacher
from icd_tune.method.train import build_student, trainer_terms

FUSABLE_LOSS_KEYS = ("ce_weight", "kd_weight", "kd_temperature", "contrastive_weight", "invariance_weight")
FUSABLE_METHODS = ("icd", "ce")


def fusion_key(cfg: TrialConfig) -> dict:
    """Everything that must agree within a fused group: the whole trial but its loss weights."""
    data = cfg.to_dict()
    for key in FUSABLE_LOSS_KEYS:
        data["loss"].pop(key, None)
    return data


def check_fusable(configs: list[TrialConfig]) -> None:
    """Raises ValueError naming the first setting that keeps ``configs`` from being one fused group."""
    if not configs:
        raise ValueError("a fused group needs at least one trial")
    for cfg in configs:
        if cfg.method not in FUSABLE_METHODS:
            raise ValueError(f"method {cfg.method!r}: fusion supports {', '.join(FUSABLE_METHODS)}")
        negatives = getattr(cfg.loss, "negatives", None)
        if negatives is not None and negatives.source != "batch":
            raise ValueError("negatives.source memory: fusion supports batch negatives only")
    first = fusion_key(configs[0])
    for i, cfg in enumerate(configs[1:], start=1):
        other = fusion_key(cfg)
        if other != first:
            diff = _first_difference(first, other)
            raise ValueError(f"trial {i} differs from trial 0 at {diff}: a fused group may differ only in "
                             f"loss.{', loss.'.join(FUSABLE_LOSS_KEYS)}")


def _first_difference(a, b, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    return f"{path} ({a!r} against {b!r})"


class MethodStep(nn.Module):
    """A method's ``step`` as a module's forward, so that ``functional_call`` can run it on stacked state."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        return self.method.step(inputs)


def kd_loss_batched(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature) -> torch.Tensor:
    """``losses.kd_loss`` written without ``kl_div``, which vmap has no batch rule for (it would loop per student)."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum() / student_logits.shape[0] * (temperature * temperature)


class VmapAutocast(TorchFunctionMode):
    """What autocast does to a zoo network, for the vmapped students.

    Under vmap, ``conv2d`` (and ``linear`` when both input and weight are batched) is
    decomposed before autocast sees it, so it would run in fp32 (measured on the CPU with
    torch 2.14 under bf16 autocast). This mode casts those operations' tensors to the autocast
    dtype itself, wherever autocast is on for their device (the loss terms switch it off and
    stay fp32). BatchNorm then receives low-precision activations with fp32 statistics, a mix
    vmap's batch rule rejects on the CPU; it runs in fp32 and returns the activations' dtype,
    as a mixed-precision cuDNN BatchNorm computes it.
    """

    CAST = (torch.conv1d, torch.conv2d, torch.conv3d, F.linear)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if first is None or not torch.is_autocast_enabled(first.device.type):
            return func(*args, **kwargs)
        dtype = torch.get_autocast_dtype(first.device.type)
        if func in self.CAST:
            cast = [a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
            return func(*cast, **{k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})
        if func is F.batch_norm and first.dtype == dtype:
            return func(first.float(), *args[1:], **kwargs).to(dtype)
        return func(*args, **kwargs)


def channels_last_slices(t: torch.Tensor) -> torch.Tensor:
    """A stacked (B, O, I, kh, kw) kernel laid out so that each slice, and the (B*O, I, kh, kw) view, is channels_last."""
    if t.dim() != 5:
        return t
    return t.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


class FusedStudents:
    """B trials that differ only in their loss weights, trained as one computation (see the module docstring)."""

    def __init__(self, configs: list[TrialConfig], data: DataBundle, teacher: nn.Module | None = None,
                 device: torch.device | str | None = None, teacher_outputs: nn.Module | None = None,
                 dtype: torch.dtype = torch.float32):
        """``dtype``: of the students, heads and normalised images; float64 serves exactness checks (the
        teacher passed in must then be float64 too). Training uses float32, with bf16 autocast on CUDA."""
        check_fusable(configs)
        cfg = self.cfg = configs[0]
        self.configs = list(configs)
        self.data = data
        self.device = resolve_device(device if device is not None else cfg.device)
        self.cuda = self.device.type == "cuda"
        self.amp_dtype: torch.dtype | None = torch.bfloat16 if self.cuda else None
        if teacher_outputs is None and teacher is not None and cfg.uses_teacher:
            teacher_outputs = LiveTeacher(teacher)
        if cfg.uses_teacher and teacher_outputs is None:
            raise ValueError("these trials need a teacher")
        self.teacher = teacher_outputs if cfg.uses_teacher else None
        if self.teacher is not None:
            if self.cuda:
                self.teacher = self.teacher.to(memory_format=torch.channels_last)
            self.teacher = self.teacher.to(self.device).train()
        teacher_dim = getattr(self.teacher, "feature_dim", None)
        opt = cfg.optim

        # Each student and head is built as its own Trainer builds it, so the fused group starts where B trials do.
        students = [build_student(c, data.num_classes).to(dtype) for c in configs]
        methods = [get_method(c.method)(c.loss, feature_dim(c.student), teacher_dim, num_train=data.num_train,
                                        batch_size=opt.batch_size, seed=c.seed).to(dtype) for c in configs]
        self.names = trainer_terms(cfg, methods[0])
        for c, m in zip(configs, methods):
            if trainer_terms(c, m) != self.names:
                raise ValueError(f"loss terms {trainer_terms(c, m)} differ from {self.names}: a fused group sums "
                                 f"the same terms (an ICD head in every trial or in none)")
        self.student_features = methods[0].student_features
        weights = [{"ce": c.loss.ce_weight, "kd": c.loss.kd_weight, **m.weights} for c, m in zip(configs, methods)]
        self.weights = torch.tensor([[w[n] for n in self.names] for w in weights], device=self.device)
        self.kd_temperature = torch.tensor([c.loss.kd_temperature for c in configs], device=self.device)
        self.students = len(configs)

        steps = [MethodStep(m) for m in methods]
        for module in (*students, *steps):
            module.train()
        self.student_params, self.student_buffers = self._stack(students)
        self.method_params, self.method_buffers = self._stack(steps)
        # Structure only: the stacked tensors above are swapped in for every call.
        self.student_base = copy.deepcopy(students[0]).to("meta")
        self.method_base = copy.deepcopy(steps[0]).to("meta")

        # One parameter list in the Trainer's order: the student's parameters, then the method's.
        named = [(n, p) for n, p in (*self.student_params.items(), *self.method_params.items()) if p.requires_grad]
        self.param_names = [n for n, _ in named]
        params = [p for _, p in named]
        self.optimizer = torch.optim.SGD(params, lr=resolve_lr(opt.lr, cfg.student), momentum=opt.momentum,
                                         weight_decay=opt.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, opt.milestone_epochs(), gamma=opt.gamma)
        self.data_generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.negatives_generator = torch.Generator(device=self.device).manual_seed(cfg.seed + 1_000_003)
        self.normalizer = Normalizer(data.mean, data.std, self.device, channels_last=self.cuda)
        self.normalizer.scale, self.normalizer.shift = self.normalizer.scale.to(dtype), self.normalizer.shift.to(dtype)
        self.stream = TrainStream(data.train_x, data.train_y, opt.batch_size, self.device, self.data_generator,
                                  self.normalizer, augment_images=cfg.data.augment)
        self.epoch = 0
        self._step = vmap(self._student_loss, in_dims=(0, 0, 0, 0, 0, 0) + (None,) * 7)

    def _stack(self, modules: list[nn.Module]) -> tuple[dict, dict]:
        params, buffers = stack_module_state(modules)
        layout = channels_last_slices if self.cuda else (lambda t: t)
        params = {k: layout(v.detach().to(self.device)).requires_grad_(v.requires_grad) for k, v in params.items()}
        buffers = {k: v.to(self.device) for k, v in buffers.items()}
        return params, buffers

    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _student_loss(self, s_params, s_buffers, m_params, m_buffers, weights, kd_temperature,
                      x, y, index, variant, t_logits, t_features, epoch):
        """One student's total loss, its unweighted terms and its logits: the body of Trainer.step_terms, per student."""
        if self.student_features:
            logits, features = functional_call(self.student_base, (s_params, s_buffers), (x,), {"with_features": True})
        else:
            logits, features = functional_call(self.student_base, (s_params, s_buffers), (x,)), None
        terms = {"ce": ce_loss(logits.float(), y)}
        if t_logits is not None:
            terms["kd"] = kd_loss_batched(logits, t_logits, kd_temperature)
        inputs = StepInputs(x, y, index, variant, logits, features, t_logits, t_features, epoch,
                            self.cfg.optim.epochs, self.negatives_generator)
        terms.update(functional_call(self.method_base, (m_params, m_buffers), (inputs,)))
        # A term weighted 0 is left out of the sum, as the Trainer leaves it out.
        loss = sum(torch.where(weights[i] != 0, weights[i] * terms[n], 0.0) for i, n in enumerate(self.names))
        return loss, torch.stack([terms[n].float() for n in self.names]), logits

    def step(self, x, y, index, variant, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimiser step of every student on one batch: (losses (B,), terms (B, T), logits (B, N, C))."""
        with self._autocast():
            t_logits = t_features = None
            if self.teacher is not None:
                t_logits, t_features = self.teacher(x, index, variant)  # once for the whole group
            with VmapAutocast() if self.amp_dtype is not None else contextlib.nullcontext():
                loss, values, logits = self._step(self.student_params, self.student_buffers, self.method_params,
                                                  self.method_buffers, self.weights, self.kd_temperature,
                                                  x, y, index, variant, t_logits, t_features, epoch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        self.optimizer.step()
        return loss.detach(), values.detach(), logits.detach()

    def train_epoch(self, max_steps: int | None = None) -> dict:
        """One epoch (at most ``max_steps`` steps); per-student means as lists, read once at the end."""
        epoch_number = self.epoch + 1
        b, t = self.students, len(self.names)
        sums = torch.zeros(b, t + 1, device=self.device, dtype=torch.float64)
        finite = torch.ones(b, device=self.device, dtype=torch.bool)
        correct = torch.zeros(b, device=self.device, dtype=torch.long)
        seen = steps = 0
        if self.cuda:
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        for x, y, index, variant in self.stream.epoch(max_steps):
            loss, values, logits = self.step(x, y, index, variant, epoch_number)
            with torch.no_grad():
                sums[:, :-1] += values
                sums[:, -1] += loss
                finite &= torch.isfinite(values).all(dim=1)
                correct += (logits.argmax(dim=2) == y).sum(dim=1)
            seen += y.shape[0]
            steps += 1
        totals = sums.tolist()  # the epoch's one host synchronisation
        elapsed = time.perf_counter() - start
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.epoch += 1
        n = max(1, steps)
        metrics = {f"train/loss_{name}": [row[i] / n for row in totals] for i, name in enumerate(self.names)}
        metrics["train/loss"] = [row[-1] / n for row in totals]
        metrics["train/acc1"] = [100.0 * c / max(1, seen) for c in correct.tolist()]
        metrics["finite"] = finite.tolist()
        metrics.update({"train/lr": lr, "steps": steps, "images": seen, "seconds": elapsed})
        return metrics

    def load_trials(self, states: list[dict]) -> None:
        """Continues B trials from their ``Trainer.state_dict()``s, one per student in order.

        Weights, heads, BatchNorm buffers and SGD momentum are stacked; the data order, the
        lr schedule and the epoch are the group's own and must agree (trials of one seed and
        one config share them). States come from trials on the same kind of device.
        """
        if len(states) != self.students:
            raise ValueError(f"{len(states)} trial states for {self.students} students")
        first = states[0]
        if any(s["epoch"] != first["epoch"] or not torch.equal(s["data_rng"], first["data_rng"]) for s in states):
            raise ValueError("the trials of a fused group share their epoch and data order; these states do not")
        with torch.no_grad():
            for group, key, prefix in ((self.student_params, "student", ""), (self.student_buffers, "student", ""),
                                       (self.method_params, "method", "method."), (self.method_buffers, "method", "method.")):
                for name, stacked in group.items():
                    stacked.copy_(torch.stack([s[key][name[len(prefix):]] for s in states]))
        params = self.optimizer.param_groups[0]["params"]
        if any(len(s["optimizer"]["param_groups"][0]["params"]) != len(params) for s in states):
            raise ValueError("the trials' optimisers hold other parameters than the fused group's")
        for i, p in enumerate(params):  # in the Trainer's order (``param_names``)
            buffers = [s["optimizer"]["state"].get(i, {}).get("momentum_buffer") for s in states]
            self.optimizer.state.pop(p, None)
            if all(b is not None for b in buffers):
                self.optimizer.state[p] = {"momentum_buffer": torch.empty_like(p).copy_(torch.stack(buffers))}
        self.optimizer.param_groups[0]["lr"] = first["optimizer"]["param_groups"][0]["lr"]
        self.scheduler.load_state_dict(first["scheduler"])
        self.data_generator.set_state(first["data_rng"])
        self.negatives_generator.set_state(first["negatives_rng"])
        self.epoch = int(first["epoch"])

    def momentum_state(self, b: int) -> dict[str, torch.Tensor]:
        """Student b's SGD momentum buffers, by parameter name (``method.`` before the method's own)."""
        params = self.optimizer.param_groups[0]["params"]
        return {n: self.optimizer.state[p]["momentum_buffer"][b] for n, p in zip(self.param_names, params)
                if "momentum_buffer" in self.optimizer.state.get(p, {})}

    def student_state(self, b: int) -> dict[str, torch.Tensor]:
        """Student b's weights and BatchNorm buffers under its ``state_dict`` names."""
        return {k: v[b].detach() for group in (self.student_params, self.student_buffers) for k, v in group.items()}

    def method_state(self, b: int) -> dict[str, torch.Tensor]:
        """Student b's method state (its ICD head) under the method's ``state_dict`` names."""
        prefix = "method."
        return {k[len(prefix):]: v[b].detach() for group in (self.method_params, self.method_buffers)
                for k, v in group.items()}
