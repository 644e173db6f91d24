"""``freqlens validate``: the instrument checked against published Frequency Principle results.

Three checks, each on data that ships with a package, each a function that
returns a dict (what it reproduces, the paper it reproduces, the numbers, the
threshold and ``passed``), run together by :func:`validate`:

(a) :func:`check_fp_1d` -- Xu et al. (arXiv 1901.06523), the 1-D experiment:
    an MLP (1-200-200-100-1, tanh, Adam, full batch) fits a sum of
    equal-amplitude cosines ``sum_k cos(k x)``, k = 1..5, on 201 midpoints of
    (0, pi); the relative error of each frequency (the discrete cosine
    transform of the residual at k, over the target's) converges in frequency
    order: Spearman rho between k and the convergence step (the first
    recorded step after which the error stays below 0.1) >= 0.9.
    Cosines and the cosine transform, not sines and the DFT: an MLP's output
    is not periodic on the interval, its ramp leaks into every DFT
    coefficient with an alternating sign, and in our runs that swapped the
    order of even and odd k; the even extension behind the cosine transform
    has no jump.
(b) :func:`check_digits_filtering` -- the filtering method (Xu et al.,
    arXiv 1901.06523; Wu et al., arXiv 2402.12026) on scikit-learn's
    handwritten digits (8x8 pixels scaled to [0, 1], 10 classes): an MLP
    (64-200-100-10, ReLU, softmax cross-entropy, Adam, full batch); probe
    set = 512 of its training digits (the papers measure on training data);
    :class:`~freqlens.spectral.FilterBank` over the probe pixels at 6 widths
    from :func:`~freqlens.spectral.suggest_widths`; the low-frequency
    relative error learns faster than the high-frequency one (learning speed
    ``"area"``) at every width, and the 95% bootstrap interval (200
    resamples of probe rows, filters fixed) of the difference excludes a tie.
(c) :func:`check_planted_modes` -- planted frequencies with a known answer:
    over 1,000 digits, a target built from the population kernel's
    eigenmode 1 (smoothest non-constant) plus its eigenmode 500 (rough), unit
    RMS each; an MLP (64-200-100-1, ReLU, MSE, Adam) trained on all 1,000.
    The ground truth per seed is which planted coefficient of the residual
    learns faster over the whole population; freqlens sees only N probe
    digits, builds its own eigenbasis from them
    (:func:`~freqlens.spectral.eigenbasis`) and must give the same verdict
    from its lowest non-constant mode band against its highest
    (:meth:`~freqlens.spectral.EigenBasis.band_errors`, 4 log-spaced bands).
    Passes when that holds in >= 95% of 20 seeds at N = 128 probes; the
    sweep over N = 8..256 gives the probe size below which recovery falls
    under 95%.

A negative control (``control=True``, ``freqlens validate --control``)
replaces every model by a lookup table -- one free output per training input,
trained by plain gradient descent from zero -- which has no spectral bias: its
residual decays by the same factor at every input, so every frequency
converges together. Every check must then fail, and does (tested): the
checks can tell an instrument that sees a frequency order from one that does
not.

Everything runs on CPU with fixed seeds (the same numbers on every run with
the same torch thread count); ``torch.set_num_threads`` is left to the user.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from freqlens.recording.storage import write_json
from freqlens.spectral import (
    FilterBank,
    bootstrap_weights,
    convergence_steps,
    eigenbasis,
    learning_speed,
    percentile_interval,
    suggest_widths,
)

#: Two learning speeds (``"area"``, unitless, in [0, 1] for falling curves) closer than this are a tie.
TIE = 1e-3
#: Models a check can train: the MLP of the paper, or the lookup-table negative control.
MODELS = ("mlp", "lookup")
#: Per-step decay of the lookup table's residual under gradient descent (its learning rate is set to give it).
LOOKUP_DECAY = 0.01
#: The checks, in the order they run, by the name used in ``validation.json``.
CHECKS = ("fp_1d", "digits_filtering", "planted_modes")


def _schedule(steps: int, num: int) -> np.ndarray:
    """Recorded steps: 0 and ``num`` log-spaced steps up to ``steps`` (unique integers)."""
    return np.unique(np.r_[0, np.round(np.geomspace(1, steps, num))]).astype(np.int64)


def _mlp(sizes: Sequence[int], activation: type[torch.nn.Module]) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return torch.nn.Sequential(*layers)


def _train(
    model: str,
    inputs: np.ndarray,
    targets: torch.Tensor,
    *,
    sizes: Sequence[int],
    activation: type[torch.nn.Module],
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    lr: float,
    record: np.ndarray,
    observe: np.ndarray,
    seed: int,
    probabilities: bool = False,
) -> tuple[np.ndarray, torch.nn.Module | None]:
    """Train full batch on all ``inputs`` for ``record[-1]`` steps; return the outputs on rows
    ``observe`` at the steps ``record``, shape (T, len(observe), C) float64 (softmax probabilities when
    ``probabilities``), and the trained MLP (None for the lookup table).

    ``model="mlp"``: an MLP of layer ``sizes`` with ``activation``, Adam at ``lr``.
    ``model="lookup"``: a table of one output row per input, zero at the start, plain
    gradient descent (``lr`` is ignored): for MSE at the rate at which every residual shrinks
    by the factor ``1 - LOOKUP_DECAY`` per step; for cross-entropy at ``n`` (each logit row
    moves by ``y - p`` per step). No input influences another's output.
    """
    torch.manual_seed(seed)
    n = inputs.shape[0]
    net = None
    if model == "mlp":
        net = _mlp(sizes, activation)
        x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
        forward = lambda: net(x)  # noqa: E731
        optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    else:
        table = torch.zeros(n, sizes[-1], requires_grad=True)
        forward = lambda: table  # noqa: E731
        # MSE averaged over n C entries: the gradient of an entry is 2 r / (n C);
        # cross-entropy averaged over n rows: the gradient of a logit row is (p - y) / n.
        rate = float(n) if probabilities else LOOKUP_DECAY * n * sizes[-1] / 2.0
        optimiser = torch.optim.SGD([table], lr=rate)
    index = torch.as_tensor(observe)
    wanted = set(int(s) for s in record)
    snapshots = []
    for step in range(int(record[-1]) + 1):
        if step in wanted:
            with torch.no_grad():
                out = forward()[index]
                snapshots.append((torch.softmax(out, dim=1) if probabilities else out).double().numpy())
        if step == record[-1]:
            break
        optimiser.zero_grad()
        loss(forward(), targets).backward()
        optimiser.step()
    return np.stack(snapshots), net


def _check_model(model: str) -> str:
    if model not in MODELS:
        raise ValueError(f"Expected `model` to be one of {list(MODELS)} but got {model!r}.")
    return model


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho (scipy.stats.spearmanr); NaN where either side is constant."""
    import scipy.stats

    if np.unique(a).size < 2 or np.unique(b).size < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(scipy.stats.spearmanr(a, b).statistic)


def _floats(values) -> list:
    """A JSON-safe list (NaN and infinities as None)."""
    array = np.asarray(values, dtype=np.float64)
    return [None if not math.isfinite(v) else float(v) for v in array.ravel()] if array.ndim <= 1 else [
        _floats(row) for row in array
    ]


# ------------------------------------------------------------------------------ (a)
def cosine_errors(positions: np.ndarray, outputs: np.ndarray, targets: np.ndarray,
                  frequencies: np.ndarray) -> np.ndarray:
    """Relative error per frequency of a 1-D fit, by the discrete cosine transform.

    ``|sum_i r_i cos(k x_i)| / |sum_i y_i cos(k x_i)|`` with ``r = outputs - targets``; on
    the midpoints ``x_i = (i + 1/2) pi / n`` the cosines are orthogonal (a DCT-II).

    Args:
        positions: x_i, shape (n,).
        outputs: shape (T, n).
        targets: shape (n,).
        frequencies: k, shape (K,).

    Returns:
        Shape (T, K); NaN where the target has no component at k.
    """
    basis = np.cos(np.outer(frequencies, positions))  # (K, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.abs(targets @ basis.T)
        return np.where(scale > 0, np.abs((outputs - targets) @ basis.T) / np.where(scale > 0, scale, 1.0), np.nan)


def check_fp_1d(*, quick: bool = False, seed: int = 0, model: str = "mlp",
                frequencies: Sequence[int] = (1, 2, 3, 4, 5)) -> dict:
    """Check (a): Xu et al.'s 1-D experiment, the frequencies of a sum of cosines converge in order.

    Target ``y(x) = sum_k cos(k x)`` on the midpoints ``x_i = (i + 1/2) pi / n`` (n = 201;
    101 with ``quick``), MLP input ``2 x / pi - 1``; the MLP 1-200-200-100-1 (tanh) trained by
    Adam (lr 1e-4, full batch, MSE) for 3,000 steps (lr 3e-4 and 1,000 steps with ``quick``),
    outputs recorded at 60 log-spaced steps. Per frequency k the relative error
    ``|sum_i r_i(t) cos(k x_i)| / |sum_i y_i cos(k x_i)|`` of the residual ``r = output - y``;
    its convergence step (:func:`~freqlens.spectral.convergence_steps`, threshold 0.1; a curve
    that never converges ranks last) and learning speed (``"area"``).

    Args:
        quick: the smaller settings above (a few seconds).
        seed: torch seed of the model.
        model: ``"mlp"`` or ``"lookup"`` (the negative control).
        frequencies: the integer frequencies k of the target, increasing.

    Returns:
        A dict: ``name``, ``reproduces``, ``reference``, ``settings``, ``frequencies``,
        ``convergence_steps`` (NaN as None), ``learning_speeds``, ``spearman_rho`` (k vs
        convergence step), ``spearman_rho_speed`` (k vs minus the speed), ``threshold``
        (0.9), ``passed`` (rho >= 0.9), ``steps`` and ``errors`` (T, K) for the figure.
    """
    model = _check_model(model)
    ks = np.asarray(frequencies, dtype=np.int64)
    if ks.ndim != 1 or ks.size < 2 or np.any(np.diff(ks) <= 0) or ks[0] < 1:
        raise ValueError(f"Expected `frequencies` to be >= 2 increasing positive integers but got {list(frequencies)}.")
    n, steps, lr = (101, 1000, 3e-4) if quick else (201, 3000, 1e-4)
    sizes = (1, 200, 200, 100, 1)
    x = (np.arange(n) + 0.5) * np.pi / n
    y = np.cos(np.outer(ks, x)).sum(axis=0)
    record = _schedule(steps, 60)
    outputs = _train(model, (2.0 * x / np.pi - 1.0)[:, None], torch.tensor(y, dtype=torch.float32)[:, None],
                     sizes=sizes, activation=torch.nn.Tanh, loss=lambda h, t: ((h - t) ** 2).mean(),
                     lr=lr, record=record, observe=np.arange(n), seed=seed)[0][:, :, 0]
    errors = cosine_errors(x, outputs, y, ks)  # (T, K)
    converged = convergence_steps(record, errors, threshold=0.1)
    speeds = learning_speed(record, errors)
    ranked = np.where(np.isnan(converged), np.inf, converged)  # never converged: after every step
    rho = _spearman(ks.astype(float), ranked)
    return {
        "name": "fp_1d",
        "title": "(a) 1-D Frequency Principle",
        "reproduces": "An MLP fits the frequencies of a 1-D target from low to high: the relative error "
                      "of each frequency of the residual converges in frequency order.",
        "reference": "Xu et al., Frequency Principle, arXiv 1901.06523 (1-D experiments)",
        "model": model,
        "settings": {"target": "sum_k cos(k x), x = (i + 1/2) pi / n", "n": n,
                     "network": "-".join(map(str, sizes)) + (" tanh" if model == "mlp" else ""),
                     "optimizer": f"Adam lr {lr:g}, full batch, MSE" if model == "mlp" else
                     f"gradient descent, residual x {1 - LOOKUP_DECAY} per step",
                     "steps": steps, "snapshots": int(record.size), "convergence_threshold": 0.1,
                     "transform": "discrete cosine transform at k, relative to the target's", "seed": seed},
        "frequencies": ks.tolist(),
        "convergence_steps": _floats(converged),
        "learning_speeds": _floats(speeds),
        "spearman_rho": None if math.isnan(rho) else rho,
        "spearman_rho_speed": _nan_none(_spearman(ks.astype(float), -speeds)),
        "metric": "Spearman rho between frequency k and convergence step",
        "threshold": 0.9,
        "passed": bool(not math.isnan(rho) and rho >= 0.9),
        "steps": record.tolist(),
        "errors": _floats(errors),
    }


def _nan_none(value: float):
    return None if value is None or not math.isfinite(value) else float(value)


# ------------------------------------------------------------------------------ (b)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits as pixels / 16 in [0, 1] (float32, (1797, 64)) and labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - scikit-learn is installed with freqlens' tests
        raise ImportError("freqlens validate needs scikit-learn for its digits data: pip install scikit-learn") from error
    digits = load_digits()
    return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)


def check_digits_filtering(*, quick: bool = False, seed: int = 0, model: str = "mlp",
                           resamples: int = 200, level: float = 0.95) -> dict:
    """Check (b): the filtering method on scikit-learn's digits, low frequencies learned first.

    1,200 training digits (400 with ``quick``) drawn with ``seed``; an MLP 64-200-100-10 (ReLU)
    trained by softmax cross-entropy (Adam lr 1e-3, full batch) for 500 steps (200), softmax
    outputs recorded at 30 log-spaced steps on the probe set: the first 512 (128) training
    digits. A :class:`~freqlens.spectral.FilterBank` over the probe pixels (euclidean
    distance) at 6 (4) widths from :func:`~freqlens.spectral.suggest_widths` (median effective
    neighbours log-spaced from 2 to N/4); relative errors in the MuScleLoRA form; learning
    speed ``"area"`` of the low and the high error per width; the speed difference low - high
    with a percentile bootstrap interval (``resamples`` resamples of probe rows, filters fixed).

    Returns:
        A dict with ``widths``, ``neighbours`` (median effective neighbours per width),
        ``speed_low``, ``speed_high``, ``difference``, ``interval_low``/``interval_high``,
        ``threshold`` (the tie tolerance :data:`TIE`), ``passed`` (every interval above it),
        ``accuracy`` (the probe digits at the last step; test digits too for the MLP).
    """
    model = _check_model(model)
    pixels, labels = _digits()
    n_train, n_probe, steps, num_widths = (400, 128, 200, 4) if quick else (1200, 512, 500, 6)
    order = np.random.default_rng(seed).permutation(labels.size)
    train, test = order[:n_train], order[n_train:]
    probe = np.arange(n_probe)  # rows of the training set
    record = _schedule(steps, 30)
    ce = torch.nn.functional.cross_entropy
    targets = torch.from_numpy(labels[train])
    outputs, net = _train(model, pixels[train], targets, sizes=(64, 200, 100, 10), activation=torch.nn.ReLU,
                          loss=ce, lr=1e-3, record=record, observe=probe, seed=seed, probabilities=True)
    probe_x, probe_y = pixels[train][probe], labels[train][probe]
    widths = suggest_widths(probe_x, num=num_widths)
    bank = FilterBank(probe_x, widths)
    low, high = bank.relative_errors(outputs, probe_y)  # (T, K)
    speed_low, speed_high = learning_speed(record, low), learning_speed(record, high)
    weights = bootstrap_weights(n_probe, resamples, seed=seed)
    low_r, high_r = bank.relative_errors(outputs, probe_y, weights=weights)  # (R, T, K)
    difference_r = (learning_speed(record, np.moveaxis(low_r, 1, 0))
                    - learning_speed(record, np.moveaxis(high_r, 1, 0)))  # (R, K)
    interval_low, interval_high = percentile_interval(difference_r, level=level)
    accuracy = {"probe": float((outputs[-1].argmax(axis=1) == probe_y).mean())}
    if net is not None:  # the lookup table has no output for an input it was not trained on
        with torch.no_grad():
            predicted = net(torch.from_numpy(pixels[test])).argmax(dim=1).numpy()
        accuracy["test"] = float((predicted == labels[test]).mean())
    result = {
        "name": "digits_filtering",
        "title": "(b) filtering method, digits",
        "reproduces": "With the Gaussian filtering method over high-dimensional inputs, the low-frequency "
                      "part of the error is learned before the high-frequency part, at every filter width.",
        "reference": "Xu et al., arXiv 1901.06523 (filtering method); Wu et al., arXiv 2402.12026 (MuScleLoRA)",
        "model": model,
        "settings": {"data": "sklearn.datasets.load_digits, pixels / 16", "train": n_train,
                     "probe": f"the first {n_probe} training digits", "network": "64-200-100-10 ReLU"
                     if model == "mlp" else "lookup table (one logit row per digit)",
                     "optimizer": "Adam lr 1e-3, full batch, cross-entropy" if model == "mlp" else
                     "gradient descent from zero logits", "steps": steps, "snapshots": int(record.size),
                     "distance": "euclidean", "reduction": "mean (MuScleLoRA)", "speed": "area",
                     "resamples": resamples, "level": level, "seed": seed},
        "widths": widths.tolist(),
        "neighbours": bank.neighbour_counts().tolist(),
        "speed_low": _floats(speed_low),
        "speed_high": _floats(speed_high),
        "difference": _floats(speed_low - speed_high),
        "interval_low": _floats(interval_low),
        "interval_high": _floats(interval_high),
        "accuracy": accuracy,
        "metric": f"learning speed low - high per width, {round(100 * level)}% bootstrap interval",
        "threshold": TIE,
        "passed": bool(np.all(np.nan_to_num(interval_low, nan=-np.inf) > TIE)),
        "steps": record.tolist(),
    }
    return result


# ------------------------------------------------------------------------------ (c)
def check_planted_modes(*, quick: bool = False, seed: int = 0, model: str = "mlp",
                        seeds: int | None = None, probe_size: int | None = None,
                        sizes: Sequence[int] | None = None, num_bands: int = 4) -> dict:
    """Check (c): planted low and high eigenmodes; freqlens recovers which is learned first.

    Population: 1,000 digits (300 with ``quick``) drawn with ``seed``; its eigenbasis
    (:func:`~freqlens.spectral.eigenbasis`, default width); target = ``sqrt(M) (u_1 + u_h)``
    with ``u_1`` the smoothest non-constant mode and ``u_h`` mode ``round((M - 1) / 2)`` (unit
    RMS each). Per run s = 0..``seeds``-1 (20; 5 with ``quick``) an MLP 64-200-100-1 (ReLU,
    MSE, Adam lr 1e-3, full batch, 500 steps; 300) with torch seed ``seed + s``, outputs on
    the whole population at 30 log-spaced steps.

    Ground truth per run: the learning speeds (``"area"``) of the residual's coefficients on
    ``u_1`` and ``u_h`` over the whole population; ``"low"`` when u_1's is faster by more than
    :data:`TIE`, ``"high"`` for the reverse, else ``"tie"``. freqlens' verdict from N probe
    digits drawn at random (seeded by run and N) without knowing the modes: its own
    eigenbasis of the N probes, :meth:`~freqlens.spectral.EigenBasis.band_errors` in
    ``num_bands`` log-spaced bands (relative to the first snapshot), and the speed of band 1
    (the lowest non-constant modes) against the last band (the highest). A run is recovered
    when the truth is not a tie and freqlens gives the same verdict.

    Args:
        seeds: runs (default 20; 5 with ``quick``).
        probe_size: the probe size the check is judged at (default 128; 64 with ``quick``).
        sizes: probe sizes swept (default 8, 16, 32, 64, 128, 256; 16 and 64 with ``quick``).

    Returns:
        A dict with ``recovery`` per size (rate, count and a Clopper-Pearson 95% interval),
        ``recovery_rate`` at ``probe_size``, ``min_reliable_probe_size`` (the smallest swept
        size from which every larger swept size recovers >= 95%, so recovery falls under 95%
        below it; None if the largest does not), ``sizes_below_95``,
        ``threshold`` (0.95), ``passed``, and per-run ground-truth speed differences.
    """
    import scipy.stats

    model = _check_model(model)
    population, steps = (300, 300) if quick else (1000, 500)
    seeds = seeds if seeds is not None else (5 if quick else 20)
    probe_size = probe_size if probe_size is not None else (64 if quick else 128)
    sizes = sorted(set(sizes if sizes is not None else ((16, 64) if quick else (8, 16, 32, 64, 128, 256)))
                   | {probe_size})
    if sizes[0] < 4 or sizes[-1] > population:
        raise ValueError(f"Expected probe `sizes` within [4, {population}] but got {sizes}.")
    pixels, _ = _digits()
    rows = np.random.default_rng(seed).permutation(pixels.shape[0])[:population]
    x = pixels[rows]
    basis = eigenbasis(x)
    high_mode = int(round((population - 1) / 2))
    planted = basis.modes[:, [1, high_mode]]  # (M, 2)
    y = (np.sqrt(population) * planted.sum(axis=1)).astype(np.float32)
    record = _schedule(steps, 30)
    truth, differences, verdicts = [], [], {n: [] for n in sizes}
    for run in range(seeds):
        outputs, _ = _train(model, x, torch.from_numpy(y)[:, None], sizes=(64, 200, 100, 1),
                            activation=torch.nn.ReLU, loss=lambda h, t: ((h - t) ** 2).mean(), lr=1e-3,
                            record=record, observe=np.arange(population), seed=seed + run)  # (T, M, 1)
        residual = outputs[:, :, 0] - y
        speeds = learning_speed(record, np.abs(residual @ planted))  # (2,)
        differences.append(float(speeds[0] - speeds[1]))
        truth.append(_verdict(speeds[0] - speeds[1]))
        for n in sizes:
            probe = np.random.default_rng([seed, run, n]).choice(population, n, replace=False)
            probe_basis = eigenbasis(x[probe])
            bands = probe_basis.band_errors(outputs[:, probe], y[probe, None], num_bands=num_bands)
            band_speeds = learning_speed(record, bands)
            verdicts[n].append(_verdict(band_speeds[1] - band_speeds[-1]))
    recovery = {}
    for n in sizes:
        hits = sum(t != "tie" and v == t for t, v in zip(truth, verdicts[n]))
        interval = scipy.stats.binomtest(hits, seeds).proportion_ci(confidence_level=0.95, method="exact")
        recovery[str(n)] = {"rate": hits / seeds, "recovered": hits, "runs": seeds,
                            "interval": [float(interval.low), float(interval.high)],
                            "verdicts": verdicts[n]}
    minimum = None
    for n in sizes:
        if all(recovery[str(m)]["rate"] >= 0.95 for m in sizes if m >= n):
            minimum = n
            break
    rate = recovery[str(probe_size)]["rate"]
    return {
        "name": "planted_modes",
        "title": "(c) planted eigenmodes",
        "reproduces": "Given a target planted in a known smooth and a known rough eigenmode of the inputs' "
                      "kernel, freqlens' eigenmode spectrum over a probe subset recovers which one the "
                      "model learns first, as measured over the whole population.",
        "reference": "Frequency Principle (Xu et al., arXiv 1901.06523) in the graph-Fourier basis of the "
                     "probe kernel (freqlens' eigenmode spectrum); the answer is measured, not assumed",
        "model": model,
        "settings": {"data": "sklearn.datasets.load_digits, pixels / 16", "population": population,
                     "planted_modes": [1, high_mode], "population_width": basis.width,
                     "network": "64-200-100-1 ReLU" if model == "mlp" else "lookup table",
                     "optimizer": "Adam lr 1e-3, full batch, MSE" if model == "mlp" else
                     f"gradient descent, residual x {1 - LOOKUP_DECAY} per step",
                     "steps": steps, "snapshots": int(record.size), "runs": seeds, "num_bands": num_bands,
                     "speed": "area", "tie": TIE, "seed": seed},
        "probe_size": probe_size,
        "sizes": list(sizes),
        "recovery": recovery,
        "recovery_rate": rate,
        "min_reliable_probe_size": minimum,
        "sizes_below_95": [n for n in sizes if recovery[str(n)]["rate"] < 0.95],
        "ground_truth": truth,
        "ground_truth_speed_difference": differences,
        "metric": f"share of {seeds} runs in which freqlens' verdict from {probe_size} probes matches the truth",
        "threshold": 0.95,
        "passed": bool(rate >= 0.95),
    }


def _verdict(difference: float) -> str:
    if not math.isfinite(difference) or abs(difference) <= TIE:
        return "tie"
    return "low" if difference > 0 else "high"


# ------------------------------------------------------------------------------ all
def _line(result: dict) -> str:
    """One line per check: PASS/FAIL, name, the number against its threshold."""
    status = "PASS" if result["passed"] else "FAIL"
    name = result["name"]
    if name == "fp_1d":
        rho = result["spearman_rho"]
        number = f"Spearman rho {'undefined' if rho is None else f'{rho:.3f}'} (>= 0.9)"
    elif name == "digits_filtering":
        lows = [v for v in result["interval_low"] if v is not None]
        number = (f"low - high speed interval lower ends {min(lows):.3f}..{max(lows):.3f} at "
                  f"{len(lows)} widths (> {TIE:g} at every width)" if lows else "no interval")
    else:
        number = (f"recovered in {result['recovery'][str(result['probe_size'])]['recovered']}/"
                  f"{result['settings']['runs']} runs at N={result['probe_size']} (>= 95%); "
                  + (f"reliable from N={result['min_reliable_probe_size']}"
                     if result["min_reliable_probe_size"] is not None else "reliable at no swept N"))
    return f"{status}  {result['title']}: {number} [{result['seconds']:.0f} s]"


def validate(out: str | Path, *, quick: bool = False, seed: int = 0, progress: bool = True,
             control: bool = False) -> dict:
    """Run the three checks and write ``out/validation.json`` and ``out/validation.png``.

    Args:
        out: output directory (created if missing; an existing file is an error).
        quick: smaller settings for tests (about 20 s on 2 CPU cores instead of a few minutes).
        seed: the base seed of every check.
        progress: print one line per check as it finishes (stdout).
        control: the negative control: every model is a lookup table (no spectral bias), so
            every check must fail.

    Returns:
        ``{"passed": bool, "checks": {name: check dict}, "seconds": float, ...}``, the content
        of ``validation.json``.

    Raises:
        ValueError: ``out`` is empty, names an existing file, or cannot be
            created (checked before any check runs).
    """
    if not str(out).strip():
        raise ValueError("Expected `out` to name a directory (created if missing) but got an empty path.")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"Expected `out` to be a directory (created if missing) but {str(out)!r} is a file.")
    try:  # before minutes of checks, not after: a path that cannot hold the results fails now
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"Expected `out` to be a directory that can be created but {str(out)!r} cannot "
                         f"({error.strerror or error}).") from error
    model = "lookup" if control else "mlp"
    start = time.perf_counter()
    checks = {}
    functions = {"fp_1d": check_fp_1d, "digits_filtering": check_digits_filtering,
                 "planted_modes": check_planted_modes}
    for name in CHECKS:
        function = functions[name]
        began = time.perf_counter()
        result = function(quick=quick, seed=seed, model=model)
        result["seconds"] = time.perf_counter() - began
        checks[name] = result
        if progress:
            print(_line(result), flush=True)
    results = {
        "passed": all(c["passed"] for c in checks.values()),
        "quick": quick,
        "control": control,
        "seed": seed,
        "torch_threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - start,
        "checks": checks,
    }
    write_json(out / "validation.json", results)  # atomic, strict JSON (NaN as null)
    figure = plot_validation(results)
    figure.savefig(out / "validation.png", dpi=150, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return results


def plot_validation(results: dict):
    """One panel per check (a page of figures); returns the matplotlib figure."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8), constrained_layout=True)
    checks = results["checks"]
    mark = {True: "passed", False: "FAILED"}

    a = checks["fp_1d"]
    ax = axes[0]
    steps = np.asarray(a["steps"], dtype=float)
    errors = np.array([[np.nan if v is None else v for v in row] for row in a["errors"]])
    colours = plt.cm.viridis(np.linspace(0.0, 0.9, len(a["frequencies"])))
    for i, (k, colour) in enumerate(zip(a["frequencies"], colours)):
        ax.plot(steps + 1, errors[:, i], color=colour, label=f"k = {k}")
        step = a["convergence_steps"][i]
        if step is not None:
            ax.axvline(step + 1, color=colour, linestyle=":", linewidth=1)
    ax.axhline(a["settings"]["convergence_threshold"], color="grey", linewidth=0.8, linestyle="--")
    ax.set(xscale="log", yscale="log", xlabel="training step + 1 (log)",
           ylabel="relative error |DCT(residual)(k)| / |DCT(target)(k)|")
    rho = a["spearman_rho"]
    ax.set_title(f"{a['title']}: rho = {'n/a' if rho is None else f'{rho:.2f}'} ({mark[a['passed']]})\n"
                 "dotted: convergence step (error stays < 0.1)", fontsize=9)
    ax.legend(fontsize=8, title="frequency", title_fontsize=8)

    b = checks["digits_filtering"]
    ax = axes[1]
    neighbours = np.asarray(b["neighbours"])
    diff = np.array([np.nan if v is None else v for v in b["difference"]])
    low = np.array([np.nan if v is None else v for v in b["interval_low"]])
    high = np.array([np.nan if v is None else v for v in b["interval_high"]])
    ax.errorbar(neighbours, diff, yerr=[diff - low, high - diff], fmt="o-", capsize=3,
                label=f"low - high, {round(100 * b['settings']['level'])}% bootstrap interval")
    ax.plot(neighbours, b["speed_low"], "s--", color="tab:green", markersize=4, label="speed of low-frequency error")
    ax.plot(neighbours, b["speed_high"], "^--", color="tab:red", markersize=4, label="speed of high-frequency error")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set(xscale="log", xlabel="filter width as median effective neighbours (log)",
           ylabel="learning speed (area under normalised error, log-steps)")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_title(f"{b['title']}: low before high at every width ({mark[b['passed']]})", fontsize=9)
    ax.legend(fontsize=7)

    c = checks["planted_modes"]
    ax = axes[2]
    sizes = np.asarray(c["sizes"], dtype=float)
    rates = np.array([c["recovery"][str(int(n))]["rate"] for n in sizes])
    lows = np.array([c["recovery"][str(int(n))]["interval"][0] for n in sizes])
    highs = np.array([c["recovery"][str(int(n))]["interval"][1] for n in sizes])
    ax.errorbar(sizes, rates, yerr=[rates - lows, highs - rates], fmt="o-", capsize=3,
                label=f"share of {c['settings']['runs']} runs recovered (95% Clopper-Pearson)")
    ax.axhline(0.95, color="grey", linestyle="--", linewidth=0.8, label="95%")
    ax.axvline(c["probe_size"], color="tab:orange", linestyle=":", label=f"judged at N = {c['probe_size']}")
    ax.set(xscale="log", xlabel="probe size N (log)", ylabel="recovery rate", ylim=(-0.02, 1.05))
    ax.set_xticks(sizes, [str(int(n)) for n in sizes])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_title(f"{c['title']}: which mode is learned first ({mark[c['passed']]})", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    title = "freqlens validate" + (" -- negative control (lookup-table models)" if results["control"] else "")
    fig.suptitle(f"{title}: {'all checks passed' if results['passed'] else 'a check FAILED'}", fontsize=11)
    return fig
