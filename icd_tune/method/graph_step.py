"""The training step replayed as one CUDA graph: the trial option ``step: graph``.

A batch-64 step of two small CIFAR networks is bound by the host issuing a few hundred small
kernels. Under ``step: graph`` the whole step (the student's and the teacher's forward, or the
device-resident teacher-output cache, the loss terms, backward, the SGD step and the epoch's
figures) is captured once into a CUDA graph and replayed for every batch from static input
buffers, which each batch is copied into. What keeps it the same training as the eager loop:

* the method contract (``distillers/base.py``): a step never synchronises with the host and
  keeps its shapes fixed; memory banks, queues and CRD's normaliser are updated in place;
* the epoch's figures are an :class:`EpochTally` of device tensors, updated by the step itself
  with a device step counter, so a non-finite term is found on the device and read once an
  epoch, exactly as the eager loop reads it (the eager loop uses the same tally);
* what a captured step holds as Python values is frozen at capture, so the step is captured
  again whenever they change: the optimiser's settings (the learning rate at a milestone: the
  SGD of torch 2.11 and 2.14 turns a tensor lr into a host scalar in its foreach and single-tensor
  paths, ``alpha=-lr``, so the lr stays a float and a milestone re-captures), and what the
  method's step reads of the epoch (``Distiller.graph_key``: DKD's warm-up factor);
* the trial's negatives generator is registered with the graph
  (``CUDAGraph.register_generator_state``), so each replay draws the next negatives from the
  same stream the eager step draws them from; the data generator stays outside the graph;
* before a capture, warm-up steps run on a side stream (as the PyTorch CUDA-graphs notes do), so
  lazy initialisation and the SGD momentum buffers happen outside it. They are real steps on
  real batches, counted in the epoch. A capture runs nothing, so the batch in the buffers when
  it is captured is trained by the replay that follows it: no batch is trained twice or skipped;
* a checkpoint's ``load_state_dict`` gives the optimiser new state tensors: the trainer drops
  the graph (``invalidate``) and the step is captured again.

On the CPU the same static-buffer step runs un-captured, each "replay" calling it with the
epoch and optimiser settings of its "capture", which is what lets the tests check this path
against the eager loop without a GPU.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Hashable, Iterable, Iterator

import torch

from .teacher_outputs import CachedTeacher

WARMUP_STEPS = 3  # eager steps before the first capture (the PyTorch CUDA-graphs notes' warm-up)
REWARM_STEPS = 1  # eager steps before each later capture (new lr, new epoch key, after a resume)

CPU_NOTE = "step: graph runs eager on the CPU (CUDA graphs need a GPU)"
HOST_CACHE_NOTE = ("step: graph runs eager: the teacher-output cache is read through host lookups "
                   "(it does not fit the GPU's share for it)")
NO_GENERATOR_NOTE = ("step: graph runs eager: this torch cannot register a generator with a CUDA graph "
                     "(torch.cuda.CUDAGraph.register_generator_state)")

_notes_given: set[str] = set()
_uncaptured: dict | None = None  # set by _static_step_on_cpu (tests only)


@contextlib.contextmanager
def _static_step_on_cpu(warmup: int = WARMUP_STEPS, rewarm: int = REWARM_STEPS) -> Iterator[None]:
    """Internal, for tests: trainers built inside run ``step: graph`` on the CPU through the static-buffer
    step, un-captured, with these warm-up counts, instead of falling back to the eager loop."""
    global _uncaptured
    previous, _uncaptured = _uncaptured, {"warmup": warmup, "rewarm": rewarm}
    try:
        yield
    finally:
        _uncaptured = previous


def choose_step(requested: str, device: torch.device, teacher) -> tuple[str, str | None]:
    """(the step mode a trial uses, None or one line saying why ``step: graph`` runs eager)."""
    if requested != "graph":
        return "eager", None
    if device.type != "cuda":
        return ("graph", None) if _uncaptured is not None else ("eager", CPU_NOTE)
    if isinstance(teacher, CachedTeacher) and teacher.device_rows(device) is None:
        return "eager", HOST_CACHE_NOTE
    if not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        return "eager", NO_GENERATOR_NOTE
    return "graph", None


def give_note(note: str | None) -> None:
    """Prints ``note`` to stderr, once per process."""
    if note and note not in _notes_given:
        _notes_given.add(note)
        print(note, file=sys.stderr, flush=True)


class EpochTally:
    """An epoch's figures on the device: term sums and the total, each term's first non-finite step,
    correct predictions and the step counter. Updated in place by every step, read once an epoch."""

    def __init__(self, terms: int, device: torch.device):
        self.sums = torch.zeros(terms + 1, device=device, dtype=torch.float64)
        self.first_bad = torch.full((terms,), -1, device=device, dtype=torch.long)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.steps = torch.zeros((), device=device, dtype=torch.long)

    def reset(self) -> None:
        self.sums.zero_()
        self.first_bad.fill_(-1)
        self.correct.zero_()
        self.steps.zero_()

    @torch.no_grad()
    def add(self, values: torch.Tensor, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """One step: its unweighted terms, total loss and predictions; in place, no host synchronisation."""
        values = values.detach()
        self.sums[:-1].add_(values)
        self.sums[-1].add_(loss.detach())
        bad = ~torch.isfinite(values)
        self.first_bad.copy_(torch.where(bad & (self.first_bad < 0), self.steps, self.first_bad))
        self.correct.add_((logits.detach().argmax(dim=1) == labels).sum())
        self.steps.add_(1)

    def read(self) -> tuple[list[float], list[int], int]:
        """(sums, each term's first non-finite step or -1, correct predictions): the epoch's host read."""
        return self.sums.tolist(), self.first_bad.tolist(), int(self.correct.item())


def optimizer_key(optimizer: torch.optim.Optimizer) -> tuple:
    """The optimiser's settings a captured step holds as numbers (lr, momentum, weight decay, ...)."""
    return tuple(tuple((k, v) for k, v in sorted(group.items()) if k != "params") for group in optimizer.param_groups)


class _Uncaptured:
    """The CPU's stand-in for a captured graph: a replay runs the static-buffer step as a real replay would,
    with the epoch and the optimiser settings of its capture, whatever they are now."""

    def __init__(self, step: Callable[[], None], optimizer: torch.optim.Optimizer):
        self.step, self.optimizer = step, optimizer
        self.settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]

    def replay(self) -> None:
        groups = self.optimizer.param_groups
        now = [{k: g[k] for k in s} for g, s in zip(groups, self.settings)]
        for group, captured in zip(groups, self.settings):
            group.update(captured)
        try:
            self.step()
        finally:
            for group, current in zip(groups, now):
                group.update(current)


class GraphStep:
    """Runs a trainer's epochs as replays of one captured step (``step: graph``).

    ``step(x, y, index, variant, epoch)`` is one whole training step on a batch, its figures added
    to the trainer's tally; here it always reads the static buffers. ``generators`` are the CUDA
    generators it draws from (registered with each capture).
    """

    def __init__(self, step: Callable[..., None], optimizer: torch.optim.Optimizer,
                 generators: Iterable[torch.Generator], device: torch.device):
        self.step = step
        self.optimizer = optimizer
        self.device = device
        self.capture = device.type == "cuda"
        self.generators = [g for g in generators if g.device.type == "cuda"]
        counts = _uncaptured if not self.capture and _uncaptured is not None else {}
        self.warmup = counts.get("warmup", WARMUP_STEPS)
        self.rewarm = counts.get("rewarm", REWARM_STEPS)
        self.buffers: tuple[torch.Tensor, ...] | None = None
        self.graph = None  # a torch.cuda.CUDAGraph, or _Uncaptured on the CPU; None until captured
        self.key: Hashable = None
        self.warmed = 0  # eager steps since the graph was last dropped
        self.captures = 0  # how often the step has been captured
        self.side_stream = torch.cuda.Stream(device) if self.capture else None

    def invalidate(self) -> None:
        """Drops the captured step; the next steps warm up and capture it again."""
        self.graph = None
        self.key = None
        self.warmed = 0

    def run_epoch(self, batches: Iterable[tuple[torch.Tensor, ...]], epoch: int, key: Hashable) -> int:
        """Trains on every batch (warm-up steps, a capture, replays); returns how many steps it took.

        ``key``: what the captured step holds besides its tensors (the method's ``graph_key``);
        the optimiser's settings are added here. A change drops the graph.
        """
        key = (optimizer_key(self.optimizer), key)
        if key != self.key:
            self.invalidate()
            self.key = key
        steps = 0
        for batch in batches:
            self._load(batch)
            if self.graph is None and self.warmed < (self.warmup if self.captures == 0 else self.rewarm):
                self._warm_up(epoch)
            else:
                if self.graph is None:
                    self._capture(epoch)
                self.graph.replay()
            steps += 1
        return steps

    def _load(self, batch: tuple[torch.Tensor, ...]) -> None:
        if self.buffers is None:
            # empty_like keeps each tensor's layout (channels_last images stay channels_last).
            self.buffers = tuple(torch.empty_like(t) for t in batch)
        for buffer, tensor in zip(self.buffers, batch):
            buffer.copy_(tensor)

    def _warm_up(self, epoch: int) -> None:
        if self.capture:
            current = torch.cuda.current_stream(self.device)
            self.side_stream.wait_stream(current)
            with torch.cuda.stream(self.side_stream):
                self.step(*self.buffers, epoch)
            current.wait_stream(self.side_stream)
        else:
            self.step(*self.buffers, epoch)
        self.warmed += 1

    def _capture(self, epoch: int) -> None:
        # Grads set to None: the capture's backward allocates them from the graph's private pool.
        self.optimizer.zero_grad(set_to_none=True)
        if self.capture:
            graph = torch.cuda.CUDAGraph()
            for generator in self.generators:
                graph.register_generator_state(generator)
            # torch.cuda.graph captures on a side stream of the current device: make that the trial's.
            with torch.cuda.device(self.device), torch.cuda.graph(graph):
                self.step(*self.buffers, epoch)
            self.graph = graph
        else:
            buffers = self.buffers
            self.graph = _Uncaptured(lambda: self.step(*buffers, epoch), self.optimizer)
        self.captures += 1
