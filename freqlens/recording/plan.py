"""The ``[record]`` config section, and planning what a run records from it.

:class:`RecordConfig` is the section; :func:`plan_probe_sets` sizes the probe
sets and thins the schedule for it (timed on the model at hand,
:mod:`freqlens.recording.budget`), :func:`build_probe_sets` takes them from a
poisoned dataset's dev splits, and :func:`recording_warning` checks the plan
against the share of wall time recording measurably took.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from freqlens import distributed
from freqlens._checks import check_positive_int
from freqlens.data.splits import PoisonedDataset
from freqlens.recording.budget import SMALL_PROBE_SET, plan_probes
from freqlens.recording.precision import check_precision
from freqlens.recording.probes import PROBE_ROLES, ProbeSet
from freqlens.recording.schedule import Schedule
from freqlens.recording.spaces import DEFAULT_INPUT_SPACES, resolve_input_spaces
from freqlens.training import steps_per_epoch


@dataclass(frozen=True)
class RecordConfig:
    """What the recorder records and when.

    With ``probe_size = "auto"`` the probe sets are sized so that recording
    takes about ``budget`` of the wall time, measured on the model and data at
    hand (:func:`freqlens.recording.budget.plan_probes`); when the budget
    allows fewer than ``min_probe_size`` examples for three sets, the control
    set is left out (the verdicts use the clean and backdoor sets only), and
    when it cannot pay for ``min_probe_size`` at every snapshot of a log
    schedule, the schedule is thinned (to no fewer than ``min_snapshots``)
    rather than the budget overrun. The plan in results.json says which.
    A useful measurement comes first: ``min_probe_size`` examples per clean
    and backdoor set and ``min_snapshots`` snapshots are recorded even when
    they cost more than ``budget`` (the plan's warning then gives the
    expected share).

    ``input_spaces`` are the kernel's input spaces recorded with the
    trajectory (:mod:`freqlens.recording.spaces`): ``"flattened"`` (the
    paper's), ``"mean-pooled"``, ``"hidden:K"`` (K an integer, -1 the last
    layer), a name registered with ``register_input_space``, or
    ``"package.module:function"``; the first is the trajectory's ``inputs``.
    ``precision`` is the probe passes' precision
    (:mod:`freqlens.recording.precision`): ``"float32"`` (exact, the
    default), or ``"auto"``, bfloat16 on a CPU where it agrees with float32
    to 1e-3 on the run's own probes at the start (on the README's SST-2
    example it did, 1.3e-4, but drifted to 6.6e-3 by the last snapshot, which
    the run then warns about; in float32 that run records 17% of its wall
    time).
    """

    schedule: str = "log:50"  # "log:N", "every:K" or "steps:0,10,..."
    probe_size: int | str = "auto"  # examples per probe set (clean, backdoor, control), or "auto"
    budget: float = 0.2  # with probe_size = "auto": the share of wall time recording may take
    min_probe_size: int = 128  # with probe_size = "auto": the fewest examples per set (control dropped first)
    min_snapshots: int = 20  # with probe_size = "auto" and a log schedule: the fewest it is thinned to
    max_probe_size: int = 512  # with probe_size = "auto": the most examples per set
    batch_size: int = 32  # probe examples per forward pass (length-sorted; small is fast on CPU)
    input_spaces: list[str] = field(default_factory=lambda: list(DEFAULT_INPUT_SPACES))  # kernel input spaces
    precision: str = "float32"  # probe passes: "float32", "auto" (bfloat16 on CPU where exact to 1e-3), "bfloat16"

    def __post_init__(self) -> None:
        try:
            Schedule.parse(self.schedule)
        except ValueError as error:
            raise ValueError(f"Invalid `record.schedule`: {error}") from error
        if self.probe_size != "auto" and (isinstance(self.probe_size, (bool, str)) or not isinstance(
                self.probe_size, int) or self.probe_size < 1):
            raise ValueError(f"Expected `record.probe_size` to be 'auto' or an integer >= 1 but got "
                             f"{self.probe_size!r}.")
        if not (isinstance(self.budget, (int, float)) and 0.0 < self.budget < 1.0):
            raise ValueError(f"Expected `record.budget` in (0, 1) but got {self.budget!r}.")
        check_positive_int(self.min_probe_size, "record.min_probe_size")
        check_positive_int(self.min_snapshots, "record.min_snapshots", minimum=3)
        check_positive_int(self.max_probe_size, "record.max_probe_size", minimum=self.min_probe_size)
        check_positive_int(self.batch_size, "record.batch_size")
        resolve_input_spaces(self.input_spaces, argument="record.input_spaces")
        check_precision(self.precision, "record.precision")


def build_probe_sets(dataset: PoisonedDataset, tokenizer, *, size: int, max_length: int,
                     max_sets: int | None = None) -> list[ProbeSet]:
    """A probe set per role of :data:`~freqlens.recording.probes.PROBE_ROLES` whose dev split
    the dataset has (clean, backdoor and, where available, control), in the table's order.

    Each holds the first ``size`` examples of its split (``role.split``), named and tagged
    with its role; the control set takes the same rows as the backdoor set, so control i is
    the clean counterpart of backdoor example i. ``max_sets`` keeps only the first sets of
    that order (the optional roles come last).
    """
    sets = []
    for role in _probe_roles(dataset)[:max_sets]:
        split = getattr(dataset, role.split)
        sets.append(
            ProbeSet.from_texts(
                role.name, split.texts[:size], split.labels[:size], tokenizer,
                max_length=max_length, poison=split.poison[:size], role=role.name,
            )
        )
    return sets


def _probe_roles(dataset: PoisonedDataset) -> list:
    """The roles (:class:`~freqlens.recording.probes.ProbeRole`) whose split ``dataset`` holds, non-empty."""
    return [role for role in PROBE_ROLES.values()
            if getattr(dataset, role.split, None) is not None and len(getattr(dataset, role.split))]


def _optional_sets(roles: list) -> int:
    """How many of the last ``roles`` may be left out for the budget (the trailing optional ones,
    never all of them)."""
    count = 0
    for role in reversed(roles):
        if not role.optional:
            break
        count += 1
    return min(count, max(len(roles) - 1, 0))


def plan_probe_sets(model, dataset: PoisonedDataset, encodings, *, train_config, record: RecordConfig):
    """The probe-set size for ``record``, the number of sets, the plan (a
    :class:`~freqlens.recording.budget.ProbePlan` when ``record.probe_size`` is
    ``"auto"``, else None) and the schedule (a log schedule thinned when the
    budget cannot pay for the minimum probe size at every snapshot)."""
    roles = _probe_roles(dataset)
    available = len(roles)
    if record.probe_size != "auto":
        return record.probe_size, available, None, record.schedule
    total = steps_per_epoch(len(dataset.train), train_config.batch_size,
                            train_config.accumulation_steps) * train_config.epochs
    schedule = Schedule.parse(record.schedule)
    plan = plan_probes(
        model, encodings, torch.as_tensor(dataset.train.labels), budget=record.budget,
        train_examples=len(dataset.train), epochs=train_config.epochs,
        snapshots=len(schedule.steps(total)), num_sets=available,
        optional_sets=_optional_sets(roles), batch_size=train_config.batch_size,
        probe_batch_size=record.batch_size, minimum=record.min_probe_size, maximum=record.max_probe_size,
        min_snapshots=record.min_snapshots if schedule.kind == "log" else None,
        precision=record.precision,
    )
    if plan.limited == "snapshots":
        schedule = Schedule.log_fitting(total, plan.snapshots)
    return plan.size, plan.num_sets, plan, str(schedule)


def recording_warning(stored: Mapping, measured: float | None, budget: float) -> str | None:
    """The plan's warning, checked against the share recording measurably took: an expected
    overrun that did not happen is dropped (coarse probe sets still warn), and a measured one is said."""
    plan = stored.get("plan")
    if plan is None or measured is None:  # a fixed probe size: no budget to hold
        return stored.get("warning")
    if measured > budget:  # after the coarse-sets sentence, where there is one
        coarse = "" if plan["size"] >= SMALL_PROBE_SET else (stored.get("warning") or "")
        return (f"{coarse} Recording took {measured:.0%} of the wall time, above the {budget:.0%} budget "
                f"(record.budget; planned at {plan['expected_share']:.0%} from one timed batch at the "
                "start).").strip()
    if plan["size"] < SMALL_PROBE_SET:
        return stored.get("warning")
    return None


def probe_plan(model, dataset: PoisonedDataset, encodings, *, train_config, record: RecordConfig,
               checkpoint=None) -> dict:
    """The probe plan of a run as stored with its checkpoint: ``size``, ``num_sets``,
    ``schedule``, ``plan`` (:meth:`ProbePlan.to_dict`, or None for a fixed size) and ``warning``.

    A run with a training state in ``checkpoint`` (a
    :class:`~freqlens.checkpoint.Checkpoint`, resuming) reuses the stored plan,
    so the continued trajectory has the probes and schedule it began with;
    otherwise the plan is made by :func:`plan_probe_sets` (timed on ``model``)
    and stored in ``checkpoint`` when one is given.

    Under data-parallel training (a collective) rank 0 alone times, reads and
    writes the plan and every process gets it: a plan timed on each process
    would differ between them, and the recorder's passes over the probe sets
    are collectives that need the same probes everywhere.

    Raises:
        ValueError: resuming from a checkpoint whose ``plan.json`` is missing
            (on every process).
    """
    return distributed.on_main(_probe_plan, model, dataset, encodings, train_config=train_config, record=record,
                               checkpoint=checkpoint)


def _probe_plan(model, dataset: PoisonedDataset, encodings, *, train_config, record: RecordConfig,
                checkpoint=None) -> dict:
    resuming = checkpoint is not None and checkpoint.state is not None
    stored = checkpoint.read_plan() if resuming else None
    if resuming and stored is None:
        raise ValueError(f"Expected the probe plan {checkpoint.directory / 'plan.json'} next to the training "
                         "state but it is missing: the run cannot be continued.")
    if stored is None:
        size, num_sets, plan, schedule = plan_probe_sets(model, dataset, encodings, train_config=train_config,
                                                         record=record)
        stored = {"size": size, "num_sets": num_sets, "schedule": schedule,
                  "plan": plan.to_dict() if plan is not None else None,
                  "warning": plan.warning if plan is not None and plan.warning else None}
        if checkpoint is not None:
            checkpoint.write_plan(stored)
    return stored
