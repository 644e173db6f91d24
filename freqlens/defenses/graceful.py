"""GraCeFul: gradient clustering in the frequency space, ported to sequence classifiers (``defense.name = "graceful"``).

Wu et al., "Gracefully Filtering Backdoor Samples for Generative Large
Language Models without Retraining" (COLING 2025, arXiv 2412.02454; the
authors' code: github.com/ZrW00/GraCeFul, ``graceful_defender.py``), filter
a poisoned training set before fine-tuning in three steps:

1. *gradients in the frequency space*: the gradient of each training
   example's loss with respect to the output head's weight (``lm_head.weight``
   in the paper), a matrix, is transformed by a 2-D discrete cosine transform
   (DCT-II) and only its low-frequency block is kept (the paper's code: the
   first 1/8 of each axis), flattened;
2. *clustering*: the flattened blocks are reduced by PCA (rank 32),
   standardised, and split into two clusters by agglomerative (hierarchical)
   clustering, cosine distance, average linkage;
3. *filtering*: the smaller cluster is taken as the backdoor samples and
   dropped; the model is fine-tuned on the rest.

Ported here with ``num_labels + 1`` clusters by default (``clusters``; 2 is
the paper's rule), the smallest flagged: a classifier's head gradients
cluster by label first (below), one cluster per label plus one for the
backdoor is the paper's "two clusters" with the labels accounted for.

The paper takes the gradients of the model as loaded (no training first:
"without retraining"); ``warmup_epochs`` trains the model for that many
epochs before (0, the default, is the paper).

For a classifier the head is the last ``nn.Linear`` whose ``out_features``
is the number of labels (BERT's ``classifier``, RoBERTa's
``classifier.out_proj``, GPT-2's and Llama's ``score``), found by type, and
its per-example weight gradient has the closed form (chain rule through the
linear layer ``z = W h + b``)::

    dL_i/dW = sum_t (dL_i/dz_{i,t}) h_{i,t}^T,    dL_i/dlogits_i = softmax(logits_i) - onehot(y_i)

where ``t`` runs over the positions the head sees (one for an encoder's
pooled input; every token for a decoder head, of which only the pooled last
token gets a non-zero ``dL/dz``). :func:`head_gradients` computes it from
the head's inputs (a forward hook) and the softmax residual, pulled back to
the head's output through the model's pooling by one vector-Jacobian
product, so it holds for any family without knowing how it pools.

Two differences from the paper's LM head, both because a classifier head has
``num_labels`` (2-4) rows where an LM head has a vocabulary (32000):

- the low-frequency block keeps every row (class) and the first ``ratio``
  of the columns (the hidden axis): 1/8 of 2 rows is none, and the DC row
  along classes is identically zero (the softmax residual sums to zero over
  the classes), so it alone would carry nothing. The DCT along the classes
  is then an orthogonal rotation of the rows, which PCA, the scaler and the
  cosine distance do not see; the low-pass along the hidden axis is what
  reduces the features.
- the gradients are taken in eval mode (dropout off) and the DCT is the
  orthonormal one (``scipy.fft.dctn(type=2, norm="ortho")``); the authors'
  code takes them in train mode and uses ``torch_dct.dct_2d`` without
  normalisation (a per-axis scaling of the DC coefficient and a global
  factor).

What it sees on a classifier: the gradient of example ``i`` is the outer
product ``r_i h_i^T`` (one pooled position), so the Frobenius cosine of two
examples' gradients is ``cos(r_i, r_j) cos(h_i, h_j)``; with two classes,
``cos(r_i, r_j)`` is +1 for the same label and -1 for the other. Two
clusters are therefore the two labels unless the poisoned examples' head
inputs stand far apart. Measured (one run each, not a benchmark) on the
example SST-2 training sets (2,000 examples, 200 poisoned) with
all-MiniLM-L6-v2 as loaded (no warm-up, the paper's setting), F1 of the
flags against the poison:

- BadNets: 2 clusters, ratio 1/8 (the paper): 0.02 (the clusters are the
  labels); 3 clusters, 1/8: 0.60; 3 clusters, 1/2: 0.88 (precision 0.96,
  recall 0.81);
- AddSent: 0.03 (the labels); 0.61; 0.77 (precision 0.98, recall 0.63)

(the whole hidden axis, ``ratio = 1``: 0.89 and 0.62). On a fresh tiny
BERT (hidden 32, ``tests/defenses/test_graceful.py``) a trigger token at
6 of 8 positions in 16 of 160 rows is found with ``ratio = 1`` (precision
1.00, recall 0.75-0.88 over seeds 0-2) and not with 1/8 (4 of 32
coefficients); one trigger token among 12 was not found at any ratio, with
or without 1-8 warm-up epochs (F1 at most 0.3): a randomly initialised
encoder does not represent one token apart from the rest, the pretrained
MiniLM above does.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from freqlens._checks import check_positive_int
from freqlens.defenses.base import register_defense
from freqlens.defenses.filtering import FilteringDefense, Flags
from freqlens.models import compute_autocast, eval_mode, model_device, trim_padding
from freqlens.training import TrainConfig, train

DEFAULT_RATIO = 0.125  # the authors' code keeps shape // 8 of each axis of the DCT of lm_head's gradient
DEFAULT_PCA_RANK = 32  # the authors' pcaRank
VARIANCE_FLOOR = 1e-10  # PCA components below this share of the variance are numerical zeros, not features


@dataclass(frozen=True)
class GracefulSettings:
    """GraCeFul's settings, the config's ``[defense.options]`` table (errors name ``defense.options.<key>``)."""

    KEY: ClassVar[str] = "defense.options."

    ratio: float = DEFAULT_RATIO  # share of the hidden axis kept from the DCT's low-frequency end, in (0, 1]
    pca_rank: int = DEFAULT_PCA_RANK  # PCA components kept before clustering
    warmup_epochs: int = 0  # epochs of training before the gradients (0: the paper, the model as loaded)
    clusters: int | None = None  # clusters, the smallest flagged; None: num_labels + 1 (the paper: 2)
    batch_size: int = 64  # examples per forward pass when taking the gradients
    restart: bool = True  # train the final model from the weights before the warm-up

    def __post_init__(self) -> None:
        key = self.KEY
        ratio = self.ratio
        if not (isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and 0 < ratio <= 1):
            raise ValueError(f"Expected `{key}ratio` in (0, 1] but got {ratio!r}.")
        check_positive_int(self.pca_rank, f"{key}pca_rank")
        check_positive_int(self.warmup_epochs, f"{key}warmup_epochs", minimum=0)
        if self.clusters is not None:
            check_positive_int(self.clusters, f"{key}clusters", minimum=2)
        check_positive_int(self.batch_size, f"{key}batch_size")
        if not isinstance(self.restart, bool):
            raise ValueError(f"Expected `{key}restart` to be true or false but got {self.restart!r}.")


# -------------------------------------------------------------------- the head and its gradients
def num_labels(model: nn.Module) -> int:
    """The number of classes of a Hugging Face classifier (``config.num_labels``), wrapped or not.

    Raises:
        ValueError: no ``config.num_labels`` on the model or on a module inside it.
    """
    for module in model.modules():
        labels = getattr(getattr(module, "config", None), "num_labels", None)
        if isinstance(labels, int) and labels > 0:
            return labels
    raise ValueError(f"Expected a classifier with `config.num_labels` but {type(model).__name__} has none.")


def classification_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """The classification head of ``model``: the last ``nn.Linear`` whose ``out_features`` is the number of labels.

    BERT: ``classifier``; RoBERTa: ``classifier.out_proj``; GPT-2, Llama:
    ``score``; a decoder with an MSLR head: its second layer ``score.1``;
    a head under peft LoRA, its ``base_layer`` (LoRA's own ``lora_A``/``lora_B``
    layers are skipped).

    Returns:
        The module's name and the module.

    Raises:
        ValueError: no ``nn.Linear`` of ``model`` outputs ``num_labels`` features.
    """
    classes = num_labels(model)
    found = [(name, module) for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and module.out_features == classes
             and not any(part.startswith("lora_") for part in name.split("."))]  # not LoRA's own A/B
    if not found:
        raise ValueError(f"Expected {type(model).__name__} to have an nn.Linear classification head with "
                         f"{classes} outputs (config.num_labels) but it has none; GraCeFul takes the gradient of "
                         f"that head's weight.")
    return found[-1]


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """No parameter requires grad during the block (so the backbone's graph is not kept); restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def head_gradients(model: nn.Module, encodings: Mapping[str, torch.Tensor], labels, *,
                   batch_size: int = 64) -> np.ndarray:
    """Per-example gradients of the cross-entropy with respect to the classification head's weight.

    Closed form (module docstring): ``dL_i/dW = sum_t g_{i,t} h_{i,t}^T``
    with ``h`` the head's input (captured by a forward hook) and ``g`` the
    softmax residual ``softmax(logits_i) - onehot(y_i)`` pulled back through
    the model's pooling to the head's output (a vector-Jacobian product,
    exact: the pooling is a selection). Eval mode (dropout off), no
    parameter gradients are touched; the model's mode and ``requires_grad``
    flags are restored.

    Args:
        model: a sequence classifier (:func:`classification_head` finds its head).
        encodings: tokenised inputs, tensors of shape (N, L).
        labels: N class indices.
        batch_size: examples per forward pass.

    Returns:
        float32 array of shape (N, num_labels, head input features), row
        ``i`` the gradient of example ``i``'s loss (not the batch mean).

    Raises:
        ValueError: no classification head (:func:`classification_head`);
            labels of another length than the inputs or outside
            ``[0, num_labels)``; the head did not run in the forward pass.
    """
    name, head = classification_head(model)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    n = int(next(iter(encodings.values())).shape[0])
    if labels.shape != (n,):
        raise ValueError(f"Expected one label per example ({n}) but got shape {tuple(labels.shape)}.")
    classes = head.out_features
    if n and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ValueError(f"Expected labels in [0, {classes}) (the head {name!r} has {classes} outputs) but got "
                         f"{sorted(set(labels.tolist()))}.")
    device = model_device(model)
    seen: dict[str, torch.Tensor] = {}

    def hook(_module, args, output):
        seen["input"] = args[0].detach()
        out = output.detach().requires_grad_(True)  # the graph starts here: pooling, nothing before
        seen["output"] = out
        return out

    grads = np.empty((n, classes, head.in_features), dtype=np.float32)
    handle = head.register_forward_hook(hook)
    try:
        with eval_mode(model), _frozen(model), torch.enable_grad():
            for start in range(0, n, batch_size):
                rows = torch.arange(start, min(start + batch_size, n))
                batch = trim_padding({k: v[rows] for k, v in encodings.items()})
                seen.clear()
                with compute_autocast(model):
                    output = model(**{k: v.to(device) for k, v in batch.items()})
                if "output" not in seen:
                    raise ValueError(f"Expected the classification head {name!r} to run in the forward pass of "
                                     f"{type(model).__name__} but it did not (is it an inactive copy?).")
                logits = (output.logits if hasattr(output, "logits") else output).float()
                target = labels[rows].to(logits.device)
                with torch.no_grad():
                    residual = torch.softmax(logits, dim=-1) - nn.functional.one_hot(target, classes).to(logits.dtype)
                (pulled,) = torch.autograd.grad(logits, seen["output"], grad_outputs=residual)
                g = pulled.detach().float().reshape(len(rows), -1, classes)
                h = seen["input"].float().reshape(len(rows), -1, head.in_features)
                with torch.no_grad():
                    grads[start:start + len(rows)] = torch.einsum("btc,bth->bch", g, h).cpu().numpy()
    finally:
        handle.remove()
    return grads


# -------------------------------------------------------------------- frequency space, clustering
def low_frequency_block(gradients: np.ndarray, ratio: float = DEFAULT_RATIO) -> np.ndarray:
    """The low-frequency block of the orthonormal 2-D DCT-II of each gradient matrix.

    ``scipy.fft.dctn(type=2, norm="ortho")`` over the last two axes (classes,
    hidden), then every class row and the first ``max(1, floor(hidden *
    ratio))`` columns (GraCeFul's frequency-space gradients, arXiv
    2412.02454; the row axis is kept whole for a classifier head, see the
    module docstring).

    Args:
        gradients: array of shape (N, C, H).
        ratio: share of the H axis kept, in (0, 1].

    Returns:
        float64 array of shape (N, C, max(1, floor(H * ratio))).

    Raises:
        ValueError: ``gradients`` not 3-D, or ``ratio`` outside (0, 1].
    """
    from scipy.fft import dctn

    gradients = np.asarray(gradients, dtype=np.float64)
    if gradients.ndim != 3:
        raise ValueError(f"Expected gradients of shape (N, C, H) but got shape {gradients.shape}.")
    if not 0 < ratio <= 1:
        raise ValueError(f"Expected `ratio` in (0, 1] but got {ratio!r}.")
    keep = max(1, int(np.floor(gradients.shape[2] * ratio)))
    return dctn(gradients, type=2, norm="ortho", axes=(1, 2))[:, :, :keep]


@dataclass
class Clusters:
    """What :func:`cluster_flags` found."""

    flagged: np.ndarray  # (N,) bool: the smaller cluster
    sizes: list[int]  # the clusters' sizes, largest first ([N] when nothing could be split)
    components: int  # PCA components used (0: no variance to cluster on)


def cluster_flags(features: np.ndarray, pca_rank: int = DEFAULT_PCA_RANK, clusters: int = 2) -> Clusters:
    """GraCeFul's clustering: PCA, standardisation, agglomerative clusters (cosine, average); the smallest flagged.

    PCA (scikit-learn) keeps ``min(pca_rank, N, D)`` components less those
    whose share of the variance is below ``VARIANCE_FLOOR`` (numerical
    zeros, which standardising would inflate to unit variance); the
    components are standardised (``StandardScaler``) and split by
    ``AgglomerativeClustering(n_clusters=clusters, metric="cosine",
    linkage="average")``, as in the authors' code (which uses 2). On a tie
    the first smallest cluster in scikit-learn's numbering is flagged.

    Args:
        features: array of shape (N, D), one row per example.
        pca_rank: the most PCA components.
        clusters: how many clusters, at least 2.

    Returns:
        :class:`Clusters`. With no more rows than ``clusters``, or no
        variance, nothing is flagged.

    Raises:
        ValueError: ``clusters`` below 2.
    """
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    features = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    n = len(features)
    check_positive_int(clusters, "clusters", minimum=2)
    if n <= clusters or not np.any(features.var(axis=0) > 0):
        return Clusters(np.zeros(n, dtype=bool), [n], 0)
    pca = PCA(n_components=min(pca_rank, n, features.shape[1]), svd_solver="full").fit(features)
    kept = int(np.sum(pca.explained_variance_ratio_ > VARIANCE_FLOOR))
    if kept == 0:
        return Clusters(np.zeros(n, dtype=bool), [n], 0)
    reduced = StandardScaler().fit_transform(pca.transform(features)[:, :kept])
    assigned = AgglomerativeClustering(n_clusters=clusters, metric="cosine", linkage="average").fit_predict(reduced)
    counts = np.bincount(assigned, minlength=clusters)
    return Clusters(assigned == int(np.argmin(counts)), sorted(counts.tolist(), reverse=True), kept)


# -------------------------------------------------------------------- the defense
class Graceful(FilteringDefense):
    """GraCeFul as a filtering defense (``defense.name = "graceful"``, settings in ``[defense.options]``).

    Flags the smallest cluster of the training examples' head gradients in
    the frequency space (module docstring), then trains on the rest.
    ``results.json`` gets, under ``defense.graceful``, the head's name, the
    feature size, the PCA components used, the cluster sizes (largest
    first; the last one is removed) and the warm-up epochs.

    Cost: ``warmup_epochs`` epochs of training, one forward pass over the
    training set (no backward pass through the
    model), and agglomerative clustering of N rows (a condensed distance
    matrix of N(N-1)/2 float64: about 0.2 GB for 7,000 examples; 1-12 s
    for 2,000 on a shared 2-core CPU). No clean data.

    Raises:
        ValueError: (in :meth:`flag`) the model has no ``nn.Linear`` head
            with ``num_labels`` outputs.
    """

    options = GracefulSettings

    def flag(self, model: nn.Module, encodings: Mapping[str, torch.Tensor], labels: np.ndarray,
             config: TrainConfig, *, reference, progress: bool) -> Flags:
        settings: GracefulSettings = self.settings or GracefulSettings()
        head, head_module = classification_head(model)  # named before any warm-up
        if settings.warmup_epochs:
            train(model, encodings, labels, replace(config, epochs=settings.warmup_epochs), progress=progress)
        gradients = head_gradients(model, encodings, labels, batch_size=settings.batch_size)
        features = low_frequency_block(gradients, settings.ratio)
        clusters = settings.clusters or head_module.out_features + 1
        found = cluster_flags(features.reshape(len(features), -1), settings.pca_rank, clusters)
        info = {"head": head, "features": int(features[0].size) if len(features) else 0,
                "components": found.components, "clusters": found.sizes,
                "warmup_epochs": settings.warmup_epochs}
        return Flags(flagged=found.flagged, info={"graceful": info})


register_defense("graceful", Graceful)
