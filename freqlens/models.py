"""What freqlens needs from a model: class probabilities and kernel inputs.

Works for Hugging Face sequence-classification models (anything whose forward
takes ``input_ids`` / ``attention_mask`` and returns ``.logits``) and for any
``nn.Module`` whose forward returns logits.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without any)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _batches(encodings: Mapping[str, torch.Tensor], batch_size: int, device: torch.device):
    n = len(next(iter(encodings.values())))
    for start in range(0, n, batch_size):
        yield {k: v[start : start + batch_size].to(device) for k, v in encodings.items()}


def _logits(output) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output


def predict_proba(
    model: nn.Module, encodings: Mapping[str, torch.Tensor], *, batch_size: int = 128
) -> np.ndarray:
    """Softmax probabilities of ``model`` on pre-tokenised ``encodings``.

    Runs in eval mode under ``torch.inference_mode`` in batches, and restores
    the model's mode afterwards.

    Args:
        model: a classifier; its forward takes ``**encodings`` and returns
            logits or an object with ``.logits``.
        encodings: model inputs, each a tensor with N rows.
        batch_size: rows per forward pass.

    Returns:
        float32 array of shape (N, C).
    """
    device = model_device(model)
    outputs = []
    with eval_mode(model), torch.inference_mode():
        for batch in _batches(encodings, batch_size, device):
            logits = _logits(model(**batch)).float()
            outputs.append(torch.softmax(logits, dim=-1).cpu())
    return torch.cat(outputs).numpy()


def embedding_module(model: nn.Module) -> nn.Module:
    """The module whose output is the model's embedding layer.

    For BERT-like models (BERT, RoBERTa, DistilBERT, ELECTRA, ...) this is
    ``base_model.embeddings``, whose output is word + position (+ token type)
    embeddings, as in the paper. Otherwise the input (word) embeddings.
    """
    base = getattr(model, "base_model", model)
    embeddings = getattr(base, "embeddings", None)
    if isinstance(embeddings, nn.Module):
        return embeddings
    if hasattr(model, "get_input_embeddings") and model.get_input_embeddings() is not None:
        return model.get_input_embeddings()
    raise ValueError(
        f"Expected `model` to have an embedding layer (base_model.embeddings or "
        f"get_input_embeddings()) but {type(model).__name__} has none; pass the embedding layer "
        f"explicitly (`embedding_layer` of Recorder, `module` of embedding_inputs)."
    )


class _Captured(BaseException):
    """Raised by the capture hook to stop the forward pass once the output is in.

    A BaseException, so that a model catching ``Exception`` around its
    embedding call does not swallow it.
    """


@contextmanager
def capture_output(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Capture ``module``'s output during the block, and stop the forward there.

    Registers a forward hook that stores the output and raises to end the
    forward pass early (nothing after the embedding layer is computed). The
    hook is removed on every path out of the block, errors included.

    Example:
        >>> layer = nn.Linear(2, 3)
        >>> with capture_output(layer) as captured:
        ...     run_until_captured(nn.Sequential(layer, nn.ReLU()), torch.ones(1, 2))
        >>> captured[0].shape, len(layer._forward_hooks)
        (torch.Size([1, 3]), 0)
    """
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _Captured

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def run_until_captured(model: nn.Module, *args, **kwargs) -> None:
    """Call ``model`` inside :func:`capture_output`, swallowing the early stop."""
    try:
        model(*args, **kwargs)
    except _Captured:
        return
    raise RuntimeError("The captured module did not run during the forward pass.")


def embedding_inputs(
    model: nn.Module,
    encodings: Mapping[str, torch.Tensor],
    *,
    module: nn.Module | None = None,
    batch_size: int = 128,
) -> np.ndarray:
    """Kernel inputs: the embedding layer's outputs, padding zeroed, flattened.

    As in the paper, every sequence is padded to one length L and the
    embedding output (L, d) is flattened to D = L * d. Computed in eval mode
    (no dropout), with padded positions set to zero so they do not depend on
    the batch.

    Args:
        model: the classifier.
        encodings: model inputs padded to one length, with ``attention_mask``
            where there is padding.
        module: the embedding module (default: :func:`embedding_module`).
        batch_size: rows per forward pass.

    Returns:
        float32 array of shape (N, L * d).
    """
    layer = module if module is not None else embedding_module(model)
    device = model_device(model)
    rows = []
    with eval_mode(model), torch.inference_mode():
        for batch in _batches(encodings, batch_size, device):
            with capture_output(layer) as captured:
                run_until_captured(model, **batch)
            hidden = captured[0].float()
            mask = batch.get("attention_mask")
            if mask is not None and mask.shape == hidden.shape[:2]:
                hidden = hidden * mask[..., None].to(hidden.dtype)
            rows.append(hidden.reshape(hidden.shape[0], -1).cpu())
    return torch.cat(rows).numpy()
