"""CUBE: cluster the training set's representations, keep each label's largest cluster, retrain.

Cui et al., "A Unified Evaluation of Textual Backdoor Learning: Frameworks
and Benchmarks" (NeurIPS 2022 Datasets and Benchmarks, arXiv 2206.08514),
the CUBE defense it proposes, as OpenBackdoor
(``openbackdoor/defenders/cube_defender.py``) runs it:

1. train the model on the poisoned training set for a short while
   (``defense.options.epochs``; OpenBackdoor trains a separate encoder for 10
   epochs, here the run's own model is trained and then restored);
2. take every training example's representation: the input of the
   classification head's output layer (:func:`head_inputs`; BERT's pooler
   output, RoBERTa's ``classifier.dense`` activation, GPT-2's and Llama's last
   real token's hidden state), as OpenBackdoor does for BERT and RoBERTa;
3. reduce its dimension: OpenBackdoor uses PCA to 20 dimensions then UMAP to
   2 (``min_dist`` 0); UMAP is not in scikit-learn, so freqlens uses PCA to
   ``defense.options.components`` (20) then t-SNE to 2, scikit-learn's
   neighbour embedding (:func:`reduce_dimension`; ``reduction = "pca"``
   keeps PCA alone: faster, but on the tiny Llama of the tests it did not
   separate the poisoned examples where t-SNE did);
4. cluster with HDBSCAN (:class:`sklearn.cluster.HDBSCAN`; OpenBackdoor:
   ``min_samples`` 100, ``cluster_selection_epsilon`` 0);
5. within each label, keep the examples of the largest cluster and flag all
   others. HDBSCAN's noise points (cluster -1) count as one group, as in
   OpenBackdoor (which also drops a non-largest group only when it holds less
   than half of the label's examples, which every non-largest group does
   except at an exact tie).

The final model is then trained from the run's initial weights on the
unflagged examples (:class:`~freqlens.defenses.filtering.FilteringDefense`).
Extra cost: ``epochs`` epochs of training, one forward pass over the
training set, and t-SNE (85 s for 2,000 points of width 384 on a busy 2-core
machine); no clean data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from freqlens._checks import check_positive_int
from freqlens.defenses.base import register_defense
from freqlens.defenses.filtering import FilteringDefense, Flags
from freqlens.models import (
    batches_by_length,
    capture_input,
    compute_autocast,
    eval_mode,
    model_device,
    run_until_captured,
    trim_padding,
)
from freqlens.training import TrainConfig, train


# ------------------------------------------------------------------ representations
def head_layer(model: nn.Module) -> nn.Module:
    """The classifier's output layer: the last ``nn.Linear`` with ``config.num_labels`` outputs.

    BERT: ``classifier``; RoBERTa: ``classifier.out_proj``; GPT-2 and Llama:
    ``score`` (or the second layer of an MSLR head put there). A peft wrapper
    is searched through. Without ``config.num_labels`` the model's last
    ``nn.Linear`` is taken.

    Raises:
        ValueError: the model has no ``nn.Linear`` (with ``num_labels``
            outputs, when it says how many), naming the model's class.
    """
    classes = getattr(getattr(model, "config", None), "num_labels", None)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)
               and (classes is None or m.out_features == classes)]
    if not linears:
        raise ValueError(f"Expected {type(model).__name__} to end in an nn.Linear classification layer "
                         f"with {classes} outputs (config.num_labels) but found none.")
    return linears[-1]


def _last_real(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, L, d) states at each row's last position where ``mask`` is 1 (right padding) -> (B, d)."""
    if mask is None:
        return hidden[:, -1]
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (positions * (mask != 0)).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def head_inputs(model: nn.Module, encodings: Mapping[str, torch.Tensor], *, batch_size: int = 128) -> np.ndarray:
    """Each example's representation: what the classification head's output layer reads.

    The input of :func:`head_layer` in eval mode under ``torch.inference_mode``
    (the forward pass stops there). Encoders give one vector per example
    (BERT: the pooler output; RoBERTa: ``tanh(classifier.dense(h_[CLS]))``);
    decoders (GPT-2, Llama) apply their ``score`` head at every position and
    pool the last non-padding one, so the vector at each row's last position
    where ``attention_mask`` is 1 is taken, as ``transformers`` pools (right
    padding, as freqlens tokenises). Rows are batched by length and each
    batch's padding columns cut (:func:`freqlens.models.trim_padding`), which
    changes nothing but float rounding.

    Args:
        model: a sequence classifier (a peft model too).
        encodings: tokenised inputs, each (N, L).
        batch_size: rows per forward pass.

    Returns:
        float32 array (N, d), d the head's input width (the hidden size for
        the four families).

    Raises:
        ValueError: no classification layer (:func:`head_layer`).
    """
    layer = head_layer(model)
    device = model_device(model)
    n = len(next(iter(encodings.values())))
    order, batches = batches_by_length(encodings, batch_size)
    parts = []
    with eval_mode(model), torch.inference_mode(), compute_autocast(model):
        for rows in batches:
            batch = {k: v.to(device) for k, v in trim_padding({k: v[rows] for k, v in encodings.items()}).items()}
            with capture_input(layer) as captured:
                run_until_captured(model, **batch)
            hidden = captured[0].float()
            if hidden.ndim == 3:
                hidden = _last_real(hidden, batch.get("attention_mask"))
            parts.append(hidden.reshape(len(rows), -1))
    out = torch.empty(n, parts[0].shape[1])
    out[order] = torch.cat(parts).cpu()
    return out.numpy()


# ------------------------------------------------------------------ clustering and the rule
REDUCTIONS = ("tsne", "pca")  # defense.options.reduction


def reduce_dimension(representations: np.ndarray, components: int = 20, *, method: str = "tsne",
                     seed: int = 0) -> np.ndarray:
    """Lower-dimensional points for clustering, with scikit-learn.

    PCA (:class:`sklearn.decomposition.PCA`) to ``min(components, N, d)``
    dimensions; with ``method="tsne"`` then t-SNE (:class:`sklearn.manifold.TSNE`,
    2 dimensions, PCA initialisation, perplexity ``min(30, (N - 1) / 3)``),
    freqlens' stand-in for OpenBackdoor's PCA-to-20-then-UMAP-to-2 (UMAP is not
    in scikit-learn; t-SNE is the neighbour embedding it has). t-SNE costs
    O(N log N) per iteration (1,000 iterations): 85 s for 2,000 points of
    width 384 on a busy 2-core machine.

    Args:
        representations: (N, d) floats.
        components: PCA dimensions (capped at N and d).
        method: ``"tsne"`` or ``"pca"`` (PCA alone).
        seed: the PCA and t-SNE random state.

    Returns:
        float64 array (N, 2) for t-SNE (N > 3), else (N, k) with k the PCA
        dimensions.

    Raises:
        ValueError: ``method`` is not one of :data:`REDUCTIONS`.
    """
    from sklearn.decomposition import PCA

    if method not in REDUCTIONS:
        raise ValueError(f"Expected `method` to be one of {REDUCTIONS} but got {method!r}.")
    x = np.asarray(representations, dtype=np.float64)
    if len(x) < 2 or np.ptp(x, axis=0).max(initial=0.0) == 0:  # one point, or all alike: nothing to reduce
        return np.zeros((len(x), 1))  # (t-SNE's PCA start divides by the spread: it would crash on these)
    k = max(1, min(components, x.shape[0], x.shape[1]))
    x = PCA(n_components=k, random_state=seed).fit_transform(x)
    if method == "tsne" and len(x) > 3:
        from sklearn.manifold import TSNE

        x = TSNE(n_components=2, perplexity=min(30.0, (len(x) - 1) / 3), init="pca",
                 random_state=seed).fit_transform(x)
    return x


def cluster(points: np.ndarray, *, min_cluster_size: int = 5, min_samples: int = 100,
            epsilon: float = 0.0) -> np.ndarray:
    """HDBSCAN cluster ids (N,) of ``points`` (N, k); -1 is noise.

    ``min_cluster_size`` and ``min_samples`` are capped at the number of
    points (HDBSCAN refuses more); fewer than 2 points are all noise.

    Raises:
        ImportError: scikit-learn older than 1.3 (no ``sklearn.cluster.HDBSCAN``).
    """
    try:
        from sklearn.cluster import HDBSCAN
    except ImportError as error:  # pragma: no cover - depends on the installed scikit-learn
        raise ImportError("CUBE needs sklearn.cluster.HDBSCAN (scikit-learn >= 1.3): "
                          "pip install 'scikit-learn>=1.3'.") from error
    n = len(points)
    if n < 2:
        return np.full(n, -1)
    size = max(2, min(min_cluster_size, n))
    samples = max(1, min(min_samples, n - 1))
    return HDBSCAN(min_cluster_size=size, min_samples=samples, cluster_selection_epsilon=epsilon,
                   copy=True).fit_predict(points)


def keep_largest_per_label(clusters: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, dict]:
    """CUBE's rule: within each label, keep the largest cluster (noise, -1, is a group too), flag the rest.

    Args:
        clusters: (N,) cluster ids (-1: noise).
        labels: (N,) training labels.

    Returns:
        (N,) booleans (True: flagged) and, per label (a string key), the
        cluster kept, its size and the sizes of the groups flagged. At a tie
        for largest the lower cluster id is kept.
    """
    clusters, labels = np.asarray(clusters), np.asarray(labels)
    flagged = np.zeros(len(labels), dtype=bool)
    per_label = {}
    for label in np.unique(labels):
        rows = labels == label
        ids, counts = np.unique(clusters[rows], return_counts=True)
        kept = ids[np.argmax(counts)]  # np.unique sorts the ids: the lowest id wins a tie
        flagged |= rows & (clusters != kept)
        per_label[str(label.item())] = {"kept_cluster": int(kept), "kept": int(counts.max()),
                                        "flagged_groups": {str(int(i)): int(c) for i, c in zip(ids, counts)
                                                           if i != kept}}
    return flagged, per_label


# ------------------------------------------------------------------ the defense
@dataclass(frozen=True)
class CUBESettings:
    """CUBE's settings, the config's ``[defense.options]`` table (errors name ``defense.options.<key>``)."""

    KEY: ClassVar[str] = "defense.options."

    epochs: int = 1  # epochs of training on the poisoned set before the representations are taken
    reduction: str = "tsne"  # dimension reduction before clustering: "tsne" (PCA, then t-SNE to 2) or "pca"
    components: int = 20  # PCA dimensions (OpenBackdoor: 20)
    min_samples: int = 100  # HDBSCAN's min_samples (OpenBackdoor: 100), capped at the training set's size
    min_cluster_size: int = 5  # HDBSCAN's smallest cluster (scikit-learn's default 5)
    epsilon: float = 0.0  # HDBSCAN's cluster_selection_epsilon (OpenBackdoor: 0)
    restart: bool = True  # train the final model from the weights the run started with

    def __post_init__(self) -> None:
        key = self.KEY
        check_positive_int(self.epochs, f"{key}epochs")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"Expected `{key}reduction` to be one of {REDUCTIONS} but got {self.reduction!r}.")
        check_positive_int(self.components, f"{key}components")
        check_positive_int(self.min_samples, f"{key}min_samples")
        check_positive_int(self.min_cluster_size, f"{key}min_cluster_size", minimum=2)
        eps = self.epsilon
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not np.isfinite(eps) or eps < 0:
            raise ValueError(f"Expected `{key}epsilon` to be a number >= 0 but got {eps!r}.")
        if not isinstance(self.restart, bool):
            raise ValueError(f"Expected `{key}restart` to be true or false but got {self.restart!r}.")


def short_training(model: nn.Module, encodings, labels, config: TrainConfig, epochs: int, *,
                   progress: bool) -> int:
    """Train ``model`` on the (poisoned) training set for ``epochs`` epochs with ``config``'s other settings,
    no recorder, no selection; returns the steps taken (a filter's first phase)."""
    return train(model, encodings, labels, replace(config, epochs=epochs), progress=progress).steps


class CUBE(FilteringDefense):
    """CUBE (``defense.name = "cube"``, arXiv 2206.08514): keep each label's largest representation cluster.

    ``results.json``'s ``defense`` gets ``cube``: the first phase's steps,
    the reduction and the dimensions clustered, the number of clusters and
    noise points, and per
    label the cluster kept and the sizes of the groups flagged; and the
    detection precision/recall of every filter.
    """

    options = CUBESettings

    def flag(self, model, encodings, labels, config, *, reference, progress):
        settings = self.settings or CUBESettings()
        steps = short_training(model, encodings, labels, config, settings.epochs, progress=progress)
        representations = head_inputs(model, encodings)
        points = reduce_dimension(representations, settings.components, method=settings.reduction,
                                  seed=config.seed)
        clusters = cluster(points, min_cluster_size=settings.min_cluster_size, min_samples=settings.min_samples,
                           epsilon=settings.epsilon)
        flagged, per_label = keep_largest_per_label(clusters, labels)
        info = {"first_phase_steps": steps, "reduction": settings.reduction, "dimensions": int(points.shape[1]),
                "clusters": len(set(clusters.tolist()) - {-1}), "noise": int((clusters == -1).sum()),
                "per_label": per_label}
        return Flags(flagged=flagged, info={"cube": info})


register_defense("cube", CUBE)
