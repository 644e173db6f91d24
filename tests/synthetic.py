"""Hand-made trajectories with a known answer, for analysis, plot and report tests."""

from __future__ import annotations

import numpy as np

from freqlens.recording.storage import Trajectory


def _curve(steps: np.ndarray, labels: np.ndarray, learned_at: float, rng) -> np.ndarray:
    """Outputs that move from uniform to the labels around ``learned_at``."""
    progress = 1.0 / (1.0 + np.exp(-(steps - learned_at) / (0.1 * learned_at + 1.0)))
    one_hot = np.eye(2)[labels]
    noise = 0.02 * rng.random((steps.size, labels.size, 1))
    outputs = 0.5 + progress[:, None, None] * (one_hot[None] - 0.5)
    outputs = np.clip(outputs + noise * (1 - 2 * one_hot[None]), 0.0, 1.0)
    return outputs / outputs.sum(axis=2, keepdims=True)


def make_trajectory(backdoor_at: float = 20.0, clean_at: float = 80.0, seed: int = 0,
                    steps: np.ndarray | None = None) -> Trajectory:
    """Clean, backdoor and control probe sets whose outputs converge at given steps.

    The backdoor set (all labelled 1) is learned around ``backdoor_at``; the
    clean set (mixed labels, clustered inputs) around ``clean_at``.
    """
    rng = np.random.default_rng(seed)
    steps = np.array([0, 1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 200]) if steps is None else steps
    n, dim = 30, 6
    clean_labels = np.arange(n) % 2
    clean_inputs = rng.normal(size=(n, dim)) + 1.5 * clean_labels[:, None]
    backdoor_inputs = rng.normal(size=(n, dim)) + 3.0
    control_inputs = backdoor_inputs - 3.0
    meta = {
        "format": "freqlens.trajectory",
        "version": 1,
        "status": "complete",
        "probe_sets": {
            "clean": {"n": n, "dim": dim, "role": "clean"},
            "backdoor": {"n": n, "dim": dim, "role": "backdoor"},
            "control": {"n": n, "dim": dim, "role": "control"},
        },
    }
    backdoor_labels = np.ones(n, dtype=np.int64)
    control_labels = np.zeros(n, dtype=np.int64)
    return Trajectory(
        steps=steps,
        inputs={"clean": clean_inputs, "backdoor": backdoor_inputs, "control": control_inputs},
        labels={"clean": clean_labels, "backdoor": backdoor_labels, "control": control_labels},
        outputs={
            "clean": _curve(steps, clean_labels, clean_at, rng),
            "backdoor": _curve(steps, backdoor_labels, backdoor_at, rng),
            "control": _curve(steps, control_labels, clean_at, rng),
        },
        meta=meta,
    )
