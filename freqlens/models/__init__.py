"""What freqlens needs from a model: class probabilities and kernel inputs.

Works for Hugging Face sequence-classification models (anything whose forward
takes ``input_ids`` / ``attention_mask`` and returns ``.logits``) and for any
``nn.Module`` whose forward returns logits.

The kernel inputs are the output of the model's embedding layer (the paper's
probe inputs). Where that output is read depends on the model family (see
:func:`probe_embedding_layer`):

* BERT, RoBERTa, DistilBERT, ELECTRA: the output of ``base_model.embeddings``,
  word + position (+ token type) embeddings after their LayerNorm.
* GPT-2 (GPT-Neo, GPT-BigCode): ``wte(ids) + wpe(positions)``, read as the
  input of the first block ``h[0]`` (there is no embeddings module).
* Llama and other rotary-position decoders: ``embed_tokens(ids)``, the output
  of ``get_input_embeddings()``; positions enter inside attention, so the
  embedding layer carries none.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

OUTPUT = "output"
INPUT = "input"
_MODES = (OUTPUT, INPUT)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without any)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


# ------------------------------------------------------------ compute precision
#: Compute dtypes by name (``model.dtype`` in a config).
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_LOW_PRECISION = (torch.bfloat16, torch.float16)
_COMPUTE_ATTRIBUTE = "freqlens_compute_dtype"


def set_compute_dtype(model: nn.Module, dtype: torch.dtype | str | None, *,
                      name: str = "dtype") -> nn.Module:
    """Run ``model``'s forward passes in freqlens under ``torch.autocast`` to ``dtype``.

    Mixed precision with float32 master weights: the weights (and so the
    optimiser's updates) stay float32, and the training steps
    (:func:`freqlens.training.train`, every defense), the probe passes of the
    recorder and the evaluation compute in ``dtype`` on the model's device
    (:func:`compute_autocast`). With ``float16`` the training loss is scaled
    (``torch.amp.GradScaler``) so that small gradients do not flush to zero.
    Kernel inputs (:func:`embedding_inputs`) are always read in float32.
    Call it after moving the model to its device; ``float32`` or ``None``
    removes the setting.

    Args:
        model: the classifier; its trainable parameters must be float32.
        dtype: ``torch.bfloat16``, ``torch.float16``, ``torch.float32``, their
            names, or ``None``.
        name: how the caller calls ``dtype`` in error messages (``freqlens
            run`` passes ``"model.dtype"``).

    Returns:
        ``model``, with the setting stored on it (found again by
        :func:`compute_dtype`, also through wrappers such as peft's).

    Raises:
        ValueError: if ``dtype`` is not one of those; if the model has
            bfloat16/float16 parameters (AdamW's updates would round away:
            load the model in float32); or if ``torch.autocast`` cannot
            compute in ``dtype`` on the model's device.
    """
    dtype = check_compute_dtype(dtype, model_device(model), name=name)
    check_master_weights(model)
    for module in model.modules():
        if _COMPUTE_ATTRIBUTE in vars(module):
            delattr(module, _COMPUTE_ATTRIBUTE)
    if dtype is not None:
        setattr(model, _COMPUTE_ATTRIBUTE, dtype)
    return model


def check_compute_dtype(dtype: torch.dtype | str | None, device: torch.device | str, *,
                        name: str = "dtype") -> torch.dtype | None:
    """The compute dtype ``dtype`` names, checked on ``device``; ``None`` for float32.

    Raises:
        ValueError: naming ``name`` if ``dtype`` is not float32, bfloat16 or
            float16 (or their names), or if ``torch.autocast`` cannot train in
            it on ``device`` (torch itself would only warn and compute in
            float32).
    """
    if isinstance(dtype, str):
        dtype = COMPUTE_DTYPES.get(dtype, dtype)  # an unknown name is refused just below
    if dtype is not None and dtype not in COMPUTE_DTYPES.values():
        raise ValueError(f"Expected `{name}` to be one of {tuple(COMPUTE_DTYPES)} but got {dtype!r}.")
    if dtype is None or dtype == torch.float32:
        return None
    device = torch.device(device)
    problem = _autocast_problem(device, dtype)
    if problem:
        instead = "'float32'" if dtype == torch.bfloat16 else "'float32' or 'bfloat16'"
        raise ValueError(
            f"Expected `{name}` to be a precision torch.autocast computes in on {device} but "
            f"{str(dtype).removeprefix('torch.')} does not work there ({problem}); use {instead}."
        )
    return dtype


def _autocast_problem(device: torch.device, dtype: torch.dtype) -> str:
    """Why autocast to ``dtype`` on ``device`` cannot train ('' when it can): torch
    disables an unsupported autocast with only a warning, so try a tiny step."""
    if not torch.amp.is_autocast_available(device.type):
        return f"no autocast for device type {device.type!r}"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.autocast(device.type, dtype=dtype):
                enabled = torch.is_autocast_enabled(device.type)
                x = torch.ones(2, 2, device=device, requires_grad=True)
                y = x @ x
            y.float().sum().backward()
    except Exception as error:  # noqa: BLE001 - whatever the device raises, it cannot compute there
        return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if not enabled or y.dtype != dtype:
        return "; ".join(str(w.message) for w in caught) or "torch.autocast disabled itself"
    return ""


def check_master_weights(model: nn.Module) -> None:
    """Refuse a model whose trainable floating-point parameters are bfloat16 or float16.

    AdamW's updates of such weights round away (on all-MiniLM-L6-v2 in
    bfloat16, 12 steps moved 11.9% of the weights against 47.6% in float32;
    in float16 its epsilon underflows and the first step gives NaN).

    Raises:
        ValueError: naming how many parameters are in which dtype and what to
            do instead (float32 weights with a compute dtype).
    """
    low = {}
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype in _LOW_PRECISION:
            key = str(parameter.dtype).removeprefix("torch.")
            low[key] = low.get(key, 0) + parameter.numel()
    if low:
        found = ", ".join(f"{count:,} {dtype}" for dtype, count in low.items())
        raise ValueError(
            f"Expected the trainable weights of {type(model).__name__} to be float32 but {found} "
            f"weights are not: AdamW's updates round away at that precision (and float16 gives NaN). "
            f"Load the model in float32 and compute in low precision with `model.dtype` in a config "
            f"(freqlens.models.set_compute_dtype from Python): float32 weights, autocast compute."
        )


def compute_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype :func:`set_compute_dtype` stored on ``model`` or on a module inside it
    (so a peft wrapper of the model finds it), or ``None`` (float32 compute)."""
    for module in model.modules():
        dtype = vars(module).get(_COMPUTE_ATTRIBUTE)
        if dtype is not None:
            return dtype
    return None


def compute_autocast(model: nn.Module, *, unscaled_gradients: bool = False):
    """A context in which ``model``'s forward passes compute in its compute dtype.

    ``torch.autocast`` to :func:`compute_dtype` on the model's device, or no
    context when there is none. With ``unscaled_gradients=True`` (gradients
    taken without loss scaling, e.g. gradient alignment's reference
    gradients) a float16 compute dtype is not applied, since its small
    gradients would flush to zero; bfloat16 (float32's exponent range) is.
    Run the backward pass outside the context, as torch advises.
    """
    dtype = compute_dtype(model)
    if dtype is None or (unscaled_gradients and dtype == torch.float16):
        return nullcontext()
    return torch.autocast(model_device(model).type, dtype=dtype)


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
    the model's mode afterwards, in the model's compute dtype
    (:func:`set_compute_dtype`; the probabilities are float32 whatever it
    is). Rows are batched by length (a batch closes
    before its padding passes ``MAX_PADDING`` of its tokens) and each batch's
    trailing all-padding columns are cut (right padding only: a column is cut
    only when no row of the batch uses it), which changes no output beyond
    float rounding and saves most of the compute on short sentences. The
    probabilities cross to the host once. Decoder classifiers (GPT-2, Llama) pool the
    last non-padding token, found through ``config.pad_token_id``: with padded
    inputs their config needs one (``transformers`` raises otherwise).

    Args:
        model: a classifier; its forward takes ``**encodings`` and returns
            logits or an object with ``.logits``.
        encodings: model inputs, each a tensor with N rows.
        batch_size: the most rows per forward pass.

    Returns:
        float32 array of shape (N, C).
    """
    device = model_device(model)
    n = len(next(iter(encodings.values())))
    order, batches = batches_by_length(encodings, batch_size)
    outputs = []
    with eval_mode(model), torch.inference_mode(), compute_autocast(model):
        for rows in batches:
            batch = trim_padding({k: v[rows] for k, v in encodings.items()})
            logits = _logits(model(**{k: v.to(device) for k, v in batch.items()})).float()
            outputs.append(torch.softmax(logits, dim=-1))
    probabilities = torch.empty(n, outputs[0].shape[1])
    probabilities[order] = torch.cat(outputs).cpu()  # one device-to-host copy
    return probabilities.numpy()


#: A length-sorted batch closes before its padding exceeds this share of its
#: tokens (on SST-2 probes with MiniLM on 2 CPU cores: 6.4 ms per example
#: against 9.7 ms for one batch of 32 padded to the longest).
MAX_PADDING = 0.3


def batches_by_length(encodings: Mapping[str, torch.Tensor], batch_size: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The rows of ``encodings`` sorted by real length (``attention_mask``; stable) and cut into
    :func:`length_batches`: ``(order, batches)``, each batch a tensor of row indices. Without a mask,
    the rows in order."""
    mask = encodings.get("attention_mask")
    n = len(next(iter(encodings.values())))
    order = torch.arange(n) if mask is None else torch.argsort(mask.sum(dim=1), stable=True)
    lengths = None if mask is None else mask.sum(dim=1)[order]
    return order, length_batches(order, lengths, batch_size)


def length_batches(order: torch.Tensor, lengths: torch.Tensor | None, batch_size: int,
                   max_padding: float = MAX_PADDING) -> list[torch.Tensor]:
    """Split rows sorted by length into batches of at most ``batch_size`` rows whose
    padding (to the batch's longest row) stays under ``max_padding`` of their tokens."""
    if lengths is None:
        return [order[a : a + batch_size] for a in range(0, len(order), batch_size)]
    batches, start, real = [], 0, 0
    for i, length in enumerate(lengths.tolist()):
        rows = i - start
        if rows and (rows >= batch_size or length * (rows + 1) > (1 + max_padding) * (real + length)):
            batches.append(order[start:i])
            start, real = i, 0
        real += length
    batches.append(order[start:])
    return batches


def trim_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut the trailing columns that are padding in every row of the batch."""
    mask = batch.get("attention_mask")
    if mask is None or mask.ndim != 2:
        return batch
    used = torch.nonzero(mask.any(dim=0))
    length = int(used.max()) + 1 if used.numel() else mask.shape[1]
    if length == mask.shape[1]:
        return batch
    return {k: v[:, :length] if v.ndim >= 2 and v.shape[1] == mask.shape[1] else v
            for k, v in batch.items()}


# ------------------------------------------------------ where the embeddings are
class ProbeLayer(NamedTuple):
    """Where a model's embedding-layer output is read.

    Attributes:
        module: a submodule of the model that runs once per forward pass.
        mode: ``"output"`` (the kernel input is the module's output) or
            ``"input"`` (it is the module's first input, the hidden states it
            receives).
    """

    module: nn.Module
    mode: str


EmbeddingRule = Callable[[nn.Module], "ProbeLayer | None"]


def _base(model: nn.Module) -> nn.Module:
    base = getattr(model, "base_model", model)
    return base if isinstance(base, nn.Module) else model


def _bert_like(model: nn.Module) -> ProbeLayer | None:
    """BERT, RoBERTa, DistilBERT, ELECTRA, ALBERT, DeBERTa, ...: ``base_model.embeddings``.

    Its output is word + position (+ token type) embeddings after LayerNorm
    (and dropout, off in eval mode). RoBERTa derives its position ids from
    ``input_ids`` (``padding_idx + 1`` onwards, padding kept at
    ``padding_idx``), inside this module, so nothing else is needed.
    """
    embeddings = getattr(_base(model), "embeddings", None)
    return ProbeLayer(embeddings, OUTPUT) if isinstance(embeddings, nn.Module) else None


def _gpt2_like(model: nn.Module) -> ProbeLayer | None:
    """GPT-2 (and GPT-Neo, GPT-BigCode): ``wte``/``wpe`` tables, blocks ``h``.

    There is no embeddings module: the model adds ``wte(input_ids)`` and
    ``wpe(position_ids)`` (plus ``wte(token_type_ids)`` when those are passed)
    in its forward and hands the sum, through dropout (off in eval mode), to
    the first block. So the kernel input is read as that block's input.
    """
    base = _base(model)
    wte, wpe, blocks = (getattr(base, name, None) for name in ("wte", "wpe", "h"))
    tables = isinstance(wte, nn.Embedding) and isinstance(wpe, nn.Embedding)
    if tables and isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
        return ProbeLayer(blocks[0], INPUT)
    return None


def _input_embeddings(model: nn.Module) -> ProbeLayer | None:
    """Anything with ``get_input_embeddings()``: the token embeddings alone.

    Right for Llama and other decoders whose positions enter through rotary
    embeddings inside attention (Llama, Mistral, Qwen2, GPT-J, ...): their
    embedding layer adds no position term, so its output is
    ``embed_tokens(input_ids)``. Two permutations of the same tokens then
    differ in the kernel input only through where each token sits in the
    flattened (L * d) vector -- which still encodes position, since the
    flattening is positional. (Gemma's sqrt(d) scale lives inside its
    ``embed_tokens`` and is included.) Not right for models that add learned
    positions outside the token table (OPT, BART decoders): for those,
    register a rule reading the first layer's input, as GPT-2's does.
    """
    getter = getattr(model, "get_input_embeddings", None)
    if not callable(getter):
        return None
    try:
        embeddings = getter()
    except NotImplementedError:
        return None
    return ProbeLayer(embeddings, OUTPUT) if isinstance(embeddings, nn.Module) else None


_BUILT_IN_RULES: tuple[EmbeddingRule, ...] = (_bert_like, _gpt2_like, _input_embeddings)
_RULES: list[EmbeddingRule] = list(_BUILT_IN_RULES)


def register_embedding_rule(rule: EmbeddingRule) -> EmbeddingRule:
    """Add a rule that finds a model's embedding layer, tried before the built-in ones.

    A rule takes the model and returns a :class:`ProbeLayer`, or ``None``
    when it does not apply. Usable as a decorator; registering the same rule
    twice has no effect.

    Example:
        >>> class Toy(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.stem, self.head = nn.Linear(2, 4), nn.Linear(4, 2)
        >>> @register_embedding_rule
        ... def toy(model):
        ...     return ProbeLayer(model.stem, "output") if isinstance(model, Toy) else None
        >>> model = Toy()
        >>> embedding_module(model) is model.stem
        True
        >>> unregister_embedding_rule(toy)
    """
    if not callable(rule):
        raise ValueError(f"Expected `rule` to be callable but got {rule!r}.")
    if rule not in _RULES:
        _RULES.insert(0, rule)
    return rule


def unregister_embedding_rule(rule: EmbeddingRule) -> None:
    """Remove a rule added by :func:`register_embedding_rule` (no-op if absent)."""
    if rule in _BUILT_IN_RULES:
        raise ValueError(f"{rule.__name__} is a built-in embedding rule and cannot be removed.")
    if rule in _RULES:
        _RULES.remove(rule)


def _find_probe_layer(model: nn.Module) -> ProbeLayer | None:
    for rule in _RULES:
        found = rule(model)
        if found is not None:
            module, mode = found
            if not isinstance(module, nn.Module) or mode not in _MODES:
                raise ValueError(
                    f"Expected embedding rule {getattr(rule, '__name__', rule)!r} to return "
                    f"(nn.Module, 'output' | 'input') but got {found!r}."
                )
            return ProbeLayer(module, mode)
    return None


def probe_embedding_layer(model: nn.Module) -> ProbeLayer:
    """Where ``model``'s embedding-layer output is read, and how.

    The first registered rule that applies wins (see
    :func:`register_embedding_rule`); the built-in ones are, in order:

    * BERT-like (BERT, RoBERTa, DistilBERT, ELECTRA, ...):
      ``(base_model.embeddings, "output")``, word + position (+ token type).
    * GPT-2-like (``wte``, ``wpe``, blocks ``h``): ``(h[0], "input")``, the
      hidden states ``wte(ids) + wpe(positions)`` the first block receives.
    * otherwise, e.g. Llama: ``(get_input_embeddings(), "output")``, token
      embeddings alone; with rotary positions there is no additive position
      embedding, so this *is* the embedding layer's output.

    Raises:
        ValueError: if no rule applies; the message names the class and says
            to pass the layer explicitly.

    Example:
        >>> class Toy(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.embeddings, self.head = nn.Embedding(5, 3), nn.Linear(3, 2)
        >>> layer = probe_embedding_layer(Toy())
        >>> type(layer.module).__name__, layer.mode
        ('Embedding', 'output')
    """
    found = _find_probe_layer(model)
    if found is None:
        raise ValueError(
            f"Expected `model` to have an embedding layer (base_model.embeddings, GPT-2's "
            f"wte/wpe/h, or get_input_embeddings()) but {type(model).__name__} has none; pass the "
            f"embedding layer explicitly (`embedding_layer` of Recorder, `module` of "
            f"embedding_inputs)."
        )
    return found


def embedding_module(model: nn.Module) -> nn.Module:
    """The module at which the model's embedding-layer output is read.

    For BERT-like models (BERT, RoBERTa, DistilBERT, ELECTRA, ...) this is
    ``base_model.embeddings``, whose output is word + position (+ token type)
    embeddings, as in the paper. For GPT-2-like models, which have no such
    module, it is the first block ``h[0]``, whose *input* is
    ``wte + wpe``; :func:`embedding_inputs` knows to read its input. Otherwise
    (Llama, ...) the input (word) embeddings. See :func:`probe_embedding_layer`.
    """
    return probe_embedding_layer(model).module


# ------------------------------------------------------------------- capturing
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


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    for value in kwargs.values():
        if isinstance(value, torch.Tensor):
            return value
    raise RuntimeError("The captured module was called without any tensor input.")


@contextmanager
def capture_input(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Capture ``module``'s first input during the block, and stop the forward there.

    The pre-hook twin of :func:`capture_output`: a forward pre-hook stores the
    first positional argument (or the ``hidden_states`` keyword, or else the
    first tensor keyword) and raises before ``module`` runs, so the module and
    everything after it are not computed. The hook is removed on every path
    out of the block, errors included.

    Example:
        >>> first, second = nn.Linear(2, 3), nn.Linear(3, 1)
        >>> with capture_input(second) as captured:
        ...     run_until_captured(nn.Sequential(first, second), torch.ones(1, 2))
        >>> captured[0].shape, len(second._forward_pre_hooks)
        (torch.Size([1, 3]), 0)
    """
    captured: list[torch.Tensor] = []

    def hook(_module, args, kwargs):
        captured.append(_first_input(args, kwargs))
        raise _Captured

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


def capture(module: nn.Module, mode: str = OUTPUT):
    """:func:`capture_output` (``mode="output"``) or :func:`capture_input` (``"input"``)."""
    if mode == OUTPUT:
        return capture_output(module)
    if mode == INPUT:
        return capture_input(module)
    raise ValueError(f"Expected `mode` to be one of {_MODES} but got {mode!r}.")


def run_until_captured(model: nn.Module, *args, **kwargs) -> None:
    """Call ``model`` inside :func:`capture_output` / :func:`capture_input`, swallowing the stop."""
    try:
        model(*args, **kwargs)
    except _Captured:
        return
    raise RuntimeError("The captured module did not run during the forward pass.")


def resolve_probe_layer(
    model: nn.Module, module: nn.Module | None = None, mode: str | None = None
) -> ProbeLayer:
    """Where to read the kernel inputs: ``module`` (default: the model's embedding
    layer) and ``mode`` (default: the model's own layer keeps its mode, any other
    module is read at its output)."""
    if mode is not None and mode not in _MODES:
        raise ValueError(f"Expected `mode` to be one of {_MODES} or None but got {mode!r}.")
    if module is None:
        found = probe_embedding_layer(model)
        return found if mode is None else ProbeLayer(found.module, mode)
    if mode is None:
        # The model's own layer keeps its mode (GPT-2's h[0] is read at its input);
        # any other module given explicitly is read at its output.
        found = _find_probe_layer(model)
        mode = found.mode if found is not None and found.module is module else OUTPUT
    return ProbeLayer(module, mode)


def embedding_inputs(
    model: nn.Module,
    encodings: Mapping[str, torch.Tensor],
    *,
    module: nn.Module | None = None,
    batch_size: int = 128,
    mode: str | None = None,
) -> np.ndarray:
    """Kernel inputs: the embedding layer's outputs, padding zeroed, flattened.

    As in the paper, every sequence is padded to one length L and the
    embedding output (L, d) is flattened to D = L * d. Computed in eval mode
    (no dropout; the model's mode is restored afterwards), with the positions
    where ``attention_mask`` is 0 set to zero -- wherever they are, left or
    right -- so they do not depend on the batch. The forward pass stops at the
    embedding layer, and the capture hook is removed on every path.

    Args:
        model: the classifier.
        encodings: model inputs padded to one length, with ``attention_mask``
            where there is padding.
        module: where to read the embeddings (default: the model's own, from
            :func:`probe_embedding_layer`).
        batch_size: rows per forward pass.
        mode: ``"output"`` or ``"input"`` of ``module``. Default: the mode
            :func:`probe_embedding_layer` gives when ``module`` is the model's
            own layer (or not given), else ``"output"``.

    Returns:
        float32 array of shape (N, L * d).
    """
    return _embedding_rows(model, encodings, module, batch_size, mode, _masked_flat)


def _masked_flat(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, L, d) states with the positions where ``mask`` (B, L) is 0 zeroed, flattened -> (B, L * d)."""
    hidden = hidden.float()
    if mask is not None and mask.shape == hidden.shape[:2]:
        hidden = hidden * mask[..., None].to(hidden.dtype)
    return hidden.reshape(hidden.shape[0], -1)


def _embedding_rows(model, encodings, module, batch_size, mode, reduce) -> np.ndarray:
    """The embedding layer's output for every row, reduced per batch by ``reduce(hidden, mask)``:
    eval mode, ``inference_mode``, the forward pass stopped at the layer, the hook always removed."""
    layer, how = resolve_probe_layer(model, module, mode)
    device = model_device(model)
    rows = []
    with eval_mode(model), torch.inference_mode():
        for batch in _batches(encodings, batch_size, device):
            with capture(layer, how) as captured:
                run_until_captured(model, **batch)
            rows.append(reduce(captured[0], batch.get("attention_mask")).cpu())
    return torch.cat(rows).numpy()


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, L, d) states averaged over the positions where ``mask`` (B, L) is 1 -> (B, d)
    (over every position without a mask; a row without any kept position gives zeros)."""
    hidden = hidden.float()
    if mask is None or mask.shape != hidden.shape[:2]:
        return hidden.mean(dim=1)
    weights = mask.to(hidden.dtype)[..., None]
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def pooled_embedding_inputs(
    model: nn.Module,
    encodings: Mapping[str, torch.Tensor],
    *,
    module: nn.Module | None = None,
    batch_size: int = 128,
    mode: str | None = None,
) -> np.ndarray:
    """Kernel inputs: the embedding layer's outputs averaged over the attention mask.

    The same states as :func:`embedding_inputs` (read where
    :func:`resolve_probe_layer` says, in eval mode, float32, the forward pass
    stopped at the embedding layer), averaged over the positions where
    ``attention_mask`` is 1 instead of flattened, so the result does not
    depend on the padded length L.

    Args:
        model: the classifier.
        encodings: model inputs, each with N rows, with ``attention_mask``
            where there is padding.
        module, mode: where to read the embeddings, as in :func:`embedding_inputs`.
        batch_size: rows per forward pass.

    Returns:
        float32 array of shape (N, d), d the embedding width.
    """
    return _embedding_rows(model, encodings, module, batch_size, mode, _masked_mean)


@contextmanager
def _no_new_hooks(model: nn.Module) -> Iterator[None]:
    """Remove, on the way out, every forward hook added to ``model``'s modules in the
    block, and the ``transformers`` marker saying its capturing hooks are installed."""
    marker = "_output_capturing_hooks_installed"
    before = {id(m): (set(m._forward_hooks), set(m._forward_pre_hooks), marker in vars(m))
              for m in model.modules()}
    try:
        yield
    finally:
        for module in model.modules():
            hooks, pre_hooks, marked = before.get(id(module), (set(), set(), False))
            for key in [k for k in module._forward_hooks if k not in hooks]:
                del module._forward_hooks[key]
                module._forward_hooks_with_kwargs.pop(key, None)
                module._forward_hooks_always_called.pop(key, None)
            for key in [k for k in module._forward_pre_hooks if k not in pre_hooks]:
                del module._forward_pre_hooks[key]
                module._forward_pre_hooks_with_kwargs.pop(key, None)
            if marker in vars(module) and not marked:
                delattr(module, marker)


def pooled_hidden_inputs(
    model: nn.Module,
    encodings: Mapping[str, torch.Tensor],
    *,
    layer: int = -1,
    batch_size: int = 128,
) -> tuple[np.ndarray, int]:
    """Kernel inputs: hidden layer ``layer``'s states averaged over the attention mask.

    One full forward pass with ``output_hidden_states=True`` (eval mode,
    float32, ``torch.inference_mode``); ``hidden_states[layer]`` (index 0 is
    the embedding output, -1 the last layer's) is averaged over the positions
    where ``attention_mask`` is 1. Works for any ``transformers`` model that
    returns ``hidden_states`` (BERT, RoBERTa, GPT-2, Llama, ...).

    Args:
        model: the classifier (a peft wrapper: pass its base model).
        encodings: model inputs, each with N rows.
        layer: index into the model's hidden states (Python indexing: -1 is
            the last).
        batch_size: rows per forward pass.

    Returns:
        (float32 array of shape (N, d), the number of hidden states the model
        returns, so that a caller can say which layer ``layer`` was).

    The model is left as it was: ``transformers`` installs output-capturing
    hooks on a model the first time it is asked for hidden states, and those
    this pass installed are removed again.

    Raises:
        ValueError: the model returns no ``hidden_states``, or ``layer`` is
            outside them (the message gives the range).
    """
    device = model_device(model)
    rows, count = [], 0
    with eval_mode(model), torch.inference_mode(), _no_new_hooks(model):
        for batch in _batches(encodings, batch_size, device):
            output = model(**batch, output_hidden_states=True)
            states = getattr(output, "hidden_states", None)
            if not states:
                raise ValueError(f"Expected {type(model).__name__} to return `hidden_states` with "
                                 "output_hidden_states=True but it returned none.")
            count = len(states)
            if not -count <= layer < count:
                raise ValueError(f"Expected a hidden layer index in [{-count}, {count - 1}] for "
                                 f"{type(model).__name__} ({count} hidden states, 0 = embeddings) but got {layer}.")
            rows.append(_masked_mean(states[layer], batch.get("attention_mask")).cpu())
    return torch.cat(rows).numpy(), count
