"""Where MSLR goes in a model, putting it there, and folding it back out.

METHOD.md section 3: the dense layer nearest the head becomes MSLR, i.e.
BERT-like models' ``pooler.dense`` and RoBERTa-like models'
``classifier.dense``; decoder models (GPT-2, Llama family) get a new head
hidden -> 16 -> classes without bias whose first layer is MSLR. Any other
``nn.Linear`` can be named instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from freqlens.defenses.mslr import BANDS, MSLRConfig, MSLRLinear

HEAD_WIDTH = 16  # the decoder head's inner width (METHOD.md)


class MSLRHead(nn.Sequential):
    """The head added to decoder classifiers: MSLR(hidden -> 16), then 16 -> classes.

    The first layer's base is a new, frozen, randomly initialised
    ``nn.Linear`` without bias; the second layer is trained.
    """

    def __init__(self, hidden: int, classes: int, config: MSLRConfig, *, device=None, dtype=None) -> None:
        first = nn.Linear(hidden, HEAD_WIDTH, bias=False, device=device, dtype=dtype)
        second = nn.Linear(HEAD_WIDTH, classes, bias=False, device=device, dtype=dtype)
        super().__init__(MSLRLinear(first, config), second)


def family(model: nn.Module) -> str:
    """``"bert"``, ``"roberta"``, ``"decoder"`` or ``"unknown"``, from the model's modules."""
    if _linear(model, "bert.pooler.dense") is not None:
        return "bert"
    if _linear(model, "classifier.dense") is not None:
        return "roberta"
    if _linear(model, "score") is not None:
        return "decoder"
    return "unknown"


def default_target(model: nn.Module) -> str:
    """The module MSLR replaces (or, for decoders, the head it is added as)."""
    kind = family(model)
    if kind == "unknown":
        raise ValueError(
            f"Expected a model with a known MSLR placement (BERT-like `bert.pooler.dense`, RoBERTa-like "
            f"`classifier.dense`, or a decoder `score` head) but got {type(model).__name__}; name the "
            f"module with `target` (`defense.mslr.target`)."
        )
    return {"bert": "bert.pooler.dense", "roberta": "classifier.dense", "decoder": "score"}[kind]


def default_mslr_config(model: nn.Module, **overrides) -> MSLRConfig:
    """The paper's bands and alpha for ``model``'s family and size, with ``overrides``.

    Encoders of hidden size >= 1024 get the large-model bands 1..9; RoBERTa-like
    models 1, 2, 4, ..., 16; other encoders the BERT-base bands 1, 4, ..., 28;
    decoders 1..4 with alpha 4.
    """
    kind = family(model)
    hidden = getattr(getattr(model, "config", None), "hidden_size", 0) or 0
    if kind == "decoder":
        bands, alpha = BANDS["llm"], 4.0
    elif hidden >= 1024:
        bands, alpha = BANDS["large"], 6.0
    elif kind == "roberta":
        bands, alpha = BANDS["roberta-base"], 6.0
    else:
        bands, alpha = BANDS["bert-base"], 6.0
    settings = {"bands": bands, "alpha": alpha}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return MSLRConfig(**settings)


def apply_mslr(model: nn.Module, config: MSLRConfig | None = None,
               target: str | Sequence[str] | None = None) -> list[str]:
    """Put MSLR into ``model`` in place and return the names of the MSLR layers.

    Args:
        model: a Hugging Face classifier (or any module, with ``target``).
        config: MSLR settings (default: :func:`default_mslr_config`).
        target: module name(s) to wrap; each must be an ``nn.Linear``. Default:
            the family's placement (:func:`default_target`). Naming a decoder's
            ``score`` head replaces it with an :class:`MSLRHead`.

    Raises:
        ValueError: a target that does not exist or is not an ``nn.Linear``,
            or a model with no known placement and no target.
    """
    config = config or default_mslr_config(model)
    targets = [default_target(model)] if target is None else (
        [target] if isinstance(target, str) else list(target))
    if not targets:
        raise ValueError("Expected `target` to name at least one module but got an empty list.")
    names = dict(model.named_modules())
    for name in targets:  # check all before changing anything
        module = names.get(name)
        if module is None:
            raise ValueError(f"Expected `target` {name!r} to name a module of {type(model).__name__} "
                             f"but it has none of that name.")
        if isinstance(module, MSLRLinear):
            raise ValueError(f"Expected `target` {name!r} to be an nn.Linear but it is already MSLR.")
        if not isinstance(module, nn.Linear):
            raise ValueError(f"Expected `target` {name!r} to be an nn.Linear but got {type(module).__name__}.")
    placed = []
    for name in targets:
        module = names[name]
        if name.split(".")[-1] == "score" and family(model) == "decoder" and name == "score":
            head = MSLRHead(module.in_features, module.out_features, config,
                            device=module.weight.device, dtype=module.weight.dtype)
            _set_module(model, name, head)
            placed.append(f"{name}.0")
        else:
            _set_module(model, name, MSLRLinear(module, config))
            placed.append(name)
    return placed


def mslr_layers(model: nn.Module) -> dict[str, MSLRLinear]:
    """The MSLR layers of ``model`` by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, MSLRLinear)}


def merge_mslr(model: nn.Module) -> nn.Module:
    """Fold every MSLR layer into a plain ``nn.Linear``, in place; returns ``model``."""
    for name, layer in mslr_layers(model).items():
        _set_module(model, name, layer.merged())
    return model


def _linear(model: nn.Module, name: str) -> nn.Module | None:
    module = dict(model.named_modules()).get(name)
    return module if isinstance(module, (nn.Linear, MSLRLinear, MSLRHead)) else None


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
