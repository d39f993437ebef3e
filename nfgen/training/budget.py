"""A job's wall-clock budget (``train.max_time``): when to stop so that the run still ends in time.

A job on a shared cluster is killed at its time limit, whatever it is doing. So the trainer does
not stop when the budget is spent, but at the last step after which, by what it has measured,
everything still to do fits: the work due at this step (a periodic evaluation, sample grid or
checkpoint), one more training step, and the final phase (evaluation, sample grids, ``last.pt``).

The rule, checked after every step: continue while

    elapsed + due now + slowest of the last ``STEP_WINDOW`` steps + ``RESERVE`` x final phase <= budget

and otherwise run the final phase now. Each phase's cost is its slowest measurement in this job
(``Budget.measure_final_phase`` times the final phase's parts once before the first step by
calling the functions the final phase calls): a stop that overruns a cluster's limit loses the job's work,
one that comes a step early loses a step. The reserve covers a final phase slower than
measured, the window a step slower than the recent ones; a longer stall (other processes taking
the machine) can still overrun, and the trainer then says by how much.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from nfgen.config.schema import TrainConfig, parse_duration

PHASES = ("eval", "samples", "save")  # the final phase's parts, each also due periodically
# The final phase: an evaluation (which may write best.pt), sample grids, and last.pt.
FINAL = ("eval", "save", "samples", "save")
STEP_WINDOW = 20  # steps whose slowest predicts the next (the first ones, compiling, drop out)
RESERVE = 1.5  # the final phase is reserved this multiple of its measured time


class Budget:
    """The clock and cost estimates of one job; ``seconds`` may be ``math.inf`` (no budget).
    ``clock`` returns seconds (``time.monotonic``; tests pass a virtual one)."""

    def __init__(self, seconds: float = math.inf, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self.started: float | None = None
        self.steps: deque[float] = deque(maxlen=STEP_WINDOW)
        self.cost = dict.fromkeys(PHASES, 0.0)

    @classmethod
    def of(cls, t: TrainConfig, clock: Callable[[], float] = time.monotonic) -> Budget:
        """``train.max_time`` on ``clock``."""
        return cls(parse_duration(t.max_time) or math.inf, clock)

    @property
    def limited(self) -> bool:
        return math.isfinite(self.seconds)

    def start(self) -> None:
        self.started = self.clock()

    def elapsed(self) -> float:
        """Seconds since ``start`` (0 before it)."""
        return 0.0 if self.started is None else self.clock() - self.started

    def record(self, phase: str, seconds: float) -> None:
        """A measured duration of ``"step"`` or one of ``PHASES`` (whose slowest so far counts)."""
        if phase == "step":
            self.steps.append(seconds)
        else:
            self.cost[phase] = max(self.cost[phase], seconds)

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Record how long the block takes as ``phase`` (also when it raises)."""
        start = self.clock()
        try:
            yield
        finally:
            self.record(phase, self.clock() - start)

    def final_reserve(self) -> float:
        return RESERVE * sum(self.cost[p] for p in FINAL)

    def measure_final_phase(self, evaluate: Callable[[int], object], batches: int,
                            save: Callable[[], object], samples: Callable[[], object] | None) -> None:
        """Time the final phase's parts once, before the first step of a budgeted job, so the
        budget keeps room for them from the start, by calling what the final phase calls:
        ``evaluate(k)`` (the evaluation on ``k`` batches) on one and on two batches (the first
        also pays for starting the loader, the difference is each further batch) extrapolated to
        the evaluation's ``batches``; ``save`` (a checkpoint write); ``samples`` (the grids drawn,
        logged and written, elsewhere; None on ranks that draw none). Every rank calls this."""
        start = self.clock()
        evaluate(1)
        once = self.clock() - start
        evaluate(2)  # on every rank, whatever its share: the evaluation gathers over the ranks
        each = max(0.0, self.clock() - start - 2 * once)
        self.record("eval", once + (batches - 1) * each)
        with self.timed("save"):
            save()
        if samples is not None:
            with self.timed("samples"):
                samples()

    def allows_another_step(self, due: Iterable[str]) -> bool:
        """Whether the phases ``due`` at this step (a name per occurrence, e.g. ``("eval", "save")``
        for an evaluation that may write best.pt), one more step and the final phase fit."""
        if not self.limited:
            return True
        ahead = sum(self.cost[p] for p in due) + max(self.steps, default=0.0) + self.final_reserve()
        return self.elapsed() + ahead <= self.seconds


def due(step: int, t: TrainConfig) -> list[str]:
    """The phases of the periodic work due at ``step``, a name per occurrence (an evaluation may
    write best.pt, so it brings a save)."""
    return ((["eval", "save"] if step % t.eval_every == 0 else []) + (["samples"] if step % t.sample_every == 0 else [])
            + (["save"] if step % t.checkpoint_every == 0 else []))


# What shortens each phase of the final phase, for the line that explains a budget stop.
LOWER = {"eval": "train.eval_batches", "samples": "train.sample_count (or fewer train.sample_temperatures)",
         "save": "the model's size (or train.ema_decay: 0, no EMA copy)"}


def stop_report(budget: Budget, step: int, max_steps: int, path: object, resume: str = "--resume") -> str:
    """The line that ends a job stopped by its budget: where it stopped, what the final phase
    measured (each part's seconds) and, when that phase took a large share of the budget, what
    to lower to leave more of it to training; then how to continue (``resume``, a command)."""
    elapsed = budget.elapsed()
    over = (f"; {format_seconds(elapsed - budget.seconds)} over it: a step or the final phase ran slower than "
            "measured" if elapsed > budget.seconds else "")
    parts = {"eval": budget.cost["eval"], "samples": budget.cost["samples"], "save": 2 * budget.cost["save"]}
    measured = ", ".join(f"{name} {format_seconds(seconds)}" for name, seconds in
                         (("evaluation", parts["eval"]), ("sample grids", parts["samples"]),
                          ("checkpoints", parts["save"])))
    line = (f"train.max_time {format_seconds(budget.seconds)} spent: stopped at step {step} of {max_steps} after "
            f"{format_seconds(elapsed)}, final evaluation and {path} included{over}; final phase measured at "
            f"{measured}, reserved x{RESERVE:g}")
    if budget.final_reserve() > budget.seconds / 4:  # the final phase, not training, took the budget
        ranked = sorted(parts, key=parts.get, reverse=True)  # type: ignore[arg-type]
        line += f": to train longer in this budget lower {LOWER[ranked[0]]}, then {LOWER[ranked[1]]}"
    return line + f"; continue with: {resume}"


def format_seconds(seconds: float) -> str:
    """``95.2`` -> ``"1m35s"``, ``7260`` -> ``"2h01m00s"``, ``4.25`` -> ``"4.2s"``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = round(seconds)
    h, m = divmod(s // 60, 60)
    return f"{h}h{m:02d}m{s % 60:02d}s" if h else f"{m}m{s % 60:02d}s"
