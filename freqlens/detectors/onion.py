"""ONION: remove the words whose removal lowers a language model's perplexity.

Qi et al., "ONION: A Simple and Effective Defense Against Textual Backdoor
Attacks" (EMNLP 2021, arXiv 2011.10369, Section 3), with OpenBackdoor's port
(``openbackdoor/defenders/onion_defender.py``) as the reference for its
defaults.

The method. A trigger word inserted into a fluent sentence is an outlier for
a language model: the sentence is less likely with it than without it. For
an input of words ``w_1 .. w_n`` (split on whitespace), ONION computes the
perplexity ``p_0`` of the whole sentence and ``p_i`` of the sentence without
``w_i``, and the suspicion of each word ``f_i = p_0 - p_i`` (how much the
perplexity drops when the word goes). Every word with ``f_i >= threshold`` is
removed and the rest, joined by single spaces, is what the victim classifies.
Perplexity is ``exp`` of the mean next-token cross-entropy of a causal
language model (GPT-2 in the paper; ``detector.onion.lm``) over the
sentence's tokens (the first token is context only; special tokens the
tokenizer adds count as tokens: GPT-2's adds none).

Cost: one language-model row per word plus one per sentence, in batches of
``detector.onion.batch_size`` rows; the victim is not queried while
repairing (only afterwards, to classify the repaired inputs).

Where freqlens departs from the reference:

- the threshold: ``f_i >= threshold`` with OpenBackdoor's default bar 0
  (the paper writes ``f_i > t`` and picks the bar on clean validation data
  instead of fixing it; set ``detector.onion.threshold`` to do that);
- padding: OpenBackdoor's ``GPT2LM`` pads a batch with the EOS token and
  averages the loss over the padded positions too (its labels include them),
  so a sentence's perplexity depends on the longest sentence in its batch;
  freqlens masks padding out of the mean (labels -100, attention mask 0,
  right padding), so a perplexity is the same in any batch;
- inputs of at most one word are returned as they are (OpenBackdoor drops
  them from the data it returns);
- a word past the language model's window (``max_length`` tokens), whose
  removal leaves what the model sees unchanged, is kept (OpenBackdoor scores
  it ``p_0 - p_0 = 0``, which its bar 0 removes);
- a sentence of fewer than two tokens has no perplexity (NaN): a word whose
  ``f_i`` is NaN is kept (OpenBackdoor's mean over no tokens is NaN as well,
  which its bar comparison keeps too);
- no lower-casing (OpenBackdoor's ``sent.lower()`` does not change the
  sentences it is given either).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from freqlens._checks import check_positive_int
from freqlens.detectors.base import Detector, Victim, register_detector

_KEY = "detector.onion.lm"


@dataclass(frozen=True)
class OnionSettings:
    """ONION's settings, the config's ``[detector.onion]`` table (errors name ``detector.onion.<key>``)."""

    KEY: ClassVar[str] = "detector.onion."

    lm: str = "gpt2"  # the language model: a hub id or a local folder, loaded with from_pretrained (GPT-2 in the paper)
    threshold: float = 0.0  # remove a word when the perplexity drop its removal brings is >= this (OpenBackdoor's bar)
    batch_size: int = 32  # sentences per language-model forward pass
    max_length: int = 96  # language-model tokens per sentence (longer ones are truncated; at most the model's positions), at least 2

    def __post_init__(self) -> None:
        key = self.KEY
        if not isinstance(self.lm, str) or not self.lm.strip():
            raise ValueError(f"Expected `{key}lm` to be a hub id or a local folder but got {self.lm!r}.")
        threshold = self.threshold
        if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and not math.isnan(threshold)):
            raise ValueError(f"Expected `{key}threshold` to be a number (not NaN) but got {threshold!r}.")
        check_positive_int(self.batch_size, f"{key}batch_size")
        check_positive_int(self.max_length, f"{key}max_length", minimum=2)  # a perplexity needs two tokens


class Onion(Detector):
    """ONION (Qi et al., arXiv 2011.10369): remove each word whose removal lowers the LM's perplexity by
    at least ``threshold``; see the module docstring for the method and what departs from the paper.

    The language model is ``settings.lm`` loaded lazily (once, at the first
    :meth:`repair` or :meth:`perplexities`, before any input is processed)
    with ``AutoModelForCausalLM`` and ``AutoTokenizer`` in float32, or the
    model and tokenizer given with ``lm=`` / :meth:`use_language_model`. It
    runs in eval mode under ``torch.inference_mode`` on the victim model's
    device (it is moved there), and a given model's train/eval mode is
    restored afterwards. :meth:`check_available` checks ``settings.lm``
    before a run starts. ``info`` (results.json) records ``lm`` (the hub id
    or folder, or ``"<class> (given)"``), ``threshold``, ``lm_max_length``
    and ``lm_rows`` (sentences the LM scored).

    Args:
        name: the name it is registered under (``"onion"``).
        settings: :class:`OnionSettings` (None: the defaults).
        frr: unused (ONION repairs instead of flagging); kept for the common signature.
        seed: unused (ONION is deterministic).
        lm: a ``(model, tokenizer)`` pair to use instead of loading
            ``settings.lm`` (see :meth:`use_language_model`).

    Raises:
        TypeError: ``settings`` is not an :class:`OnionSettings`, or ``lm``
            is not a (causal LM module, tokenizer) pair.
    """

    repairs = True
    options = OnionSettings

    def __init__(self, name: str = "onion", settings: OnionSettings | None = None, *, frr: float = 0.01,
                 seed: int = 0, lm: tuple[nn.Module, Any] | None = None) -> None:
        settings = OnionSettings() if settings is None else settings
        if not isinstance(settings, OnionSettings):
            raise TypeError(f"Expected the settings of detector {name!r} to be an OnionSettings but got "
                            f"{type(settings).__name__}.")
        super().__init__(name, settings, frr=frr, seed=seed)
        self._model: nn.Module | None = None
        self._tokenizer: Any = None
        self._lm_name = settings.lm
        if lm is not None:
            if not (isinstance(lm, (tuple, list)) and len(lm) == 2):
                raise TypeError(f"Expected `lm` to be a (model, tokenizer) pair but got {type(lm).__name__}.")
            self.use_language_model(*lm)

    # ---------------------------------------------------------------- the language model
    def use_language_model(self, model: nn.Module, tokenizer: Any) -> None:
        """Use ``model`` (a causal LM: its forward takes ``input_ids`` and ``attention_mask`` and returns
        logits of shape (B, T, V) or an object with ``.logits``) and its ``tokenizer`` (called on a list of
        strings, it returns ``input_ids``) instead of loading ``settings.lm``. The model is moved to the
        victim's device when used; its train/eval mode is restored after each use.

        Raises:
            TypeError: ``model`` is not a torch module or ``tokenizer`` is not callable.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"Expected the language model to be a torch.nn.Module but got {type(model).__name__}.")
        if not callable(tokenizer):
            raise TypeError(f"Expected the language model's tokenizer to be callable but got "
                            f"{type(tokenizer).__name__}.")
        self._model, self._tokenizer = model, tokenizer
        self._lm_name = f"{type(model).__name__} (given)"

    @classmethod
    def check_available(cls, settings: OnionSettings | None = None) -> str:
        """Check that ``settings.lm`` can be loaded as a causal language model, without loading its weights:
        the folder exists (or the hub id is in the local cache, or the hub can be reached), its config is
        a causal-LM architecture, and its tokenizer loads. Call it before training so that a run with
        ``detector.name = "onion"`` and no usable language model fails at the start.

        Returns:
            The name ``from_pretrained`` is given (the resolved folder, or the hub id).

        Raises:
            ValueError: naming ``detector.onion.lm``, what was given and why it cannot be used.
        """
        settings = OnionSettings() if settings is None else settings
        source, options = _lm_source(settings.lm)
        config = _check_causal(settings.lm, source, options)
        _load_tokenizer(settings.lm, source, options, config)
        return source

    def check(self, model: nn.Module, tokenizer: Any) -> None:
        """Before training (``freqlens run``): :meth:`check_available` for ``settings.lm``, unless a language
        model was given (``lm=``).

        Raises:
            ValueError: naming ``detector.onion.lm``, what was given and why it cannot be used.
        """
        if self._model is None:
            self.check_available(self.settings)

    def language_model(self, device: torch.device | str | None = None) -> tuple[nn.Module, Any]:
        """The language model and its tokenizer, loaded on the first call (then cached) and moved to ``device``.

        Raises:
            ValueError: naming ``detector.onion.lm``: the folder does not exist, the hub id is not
                cached and cannot be downloaded (e.g. ``HF_HUB_OFFLINE=1``), it is not a causal
                language model, or ``from_pretrained`` fails.
        """
        if self._model is None:
            self._model, self._tokenizer = _load(self.settings.lm)
        if device is not None:
            self._model.to(device)
        return self._model, self._tokenizer

    def max_length(self, model: nn.Module) -> int:
        """Language-model tokens per sentence: ``detector.onion.max_length``, or the language model's
        position table where that is shorter (a longer row would index past it)."""
        window = _window(getattr(model, "config", None))
        return min(self.settings.max_length, window) if window is not None else self.settings.max_length

    def perplexities(self, texts: Sequence[str], device: torch.device | str | None = None) -> np.ndarray:
        """The language model's perplexity of each text: float64 array of shape (N,).

        ``exp`` of the mean next-token cross-entropy (nats) over the text's
        tokens, truncated to ``max_length`` as the tokenizer truncates;
        padding is masked out, so a text's value does not depend on the others
        in its batch. A text of fewer than two tokens gets NaN. Runs
        ``batch_size`` texts per forward pass (sorted by length) under
        ``torch.inference_mode`` on ``device`` (None: where the model is).

        Raises:
            ValueError: naming ``detector.onion.lm`` when the language model cannot be loaded.
        """
        model, tokenizer = self.language_model(device)
        ids = _token_ids(tokenizer, list(texts), self.max_length(model))
        return self._perplexities_of(model, tokenizer, ids)

    def _perplexities_of(self, model: nn.Module, tokenizer: Any, ids: list[list[int]]) -> np.ndarray:
        result = np.full(len(ids), np.nan, dtype=np.float64)
        rows = [i for i, row in enumerate(ids) if len(row) >= 2]
        rows.sort(key=lambda i: len(ids[i]))
        if not rows:
            return result
        device = _device_of(model)
        pad = _pad_id(tokenizer)
        size = self.settings.batch_size
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(rows), size):
                    batch = rows[start:start + size]
                    width = max(len(ids[i]) for i in batch)
                    input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
                    mask = torch.zeros((len(batch), width), dtype=torch.long)
                    for r, i in enumerate(batch):  # right padding: positions of real tokens start at 0
                        input_ids[r, :len(ids[i])] = torch.as_tensor(ids[i], dtype=torch.long)
                        mask[r, :len(ids[i])] = 1
                    input_ids, mask = input_ids.to(device), mask.to(device)
                    output = model(input_ids=input_ids, attention_mask=mask)
                    logits = getattr(output, "logits", output)
                    if isinstance(logits, (tuple, list)):
                        logits = logits[0]
                    logits = logits[:, :-1].float()
                    labels = input_ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
                    losses = torch.nn.functional.cross_entropy(
                        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                        reduction="none").view(labels.shape)
                    counts = (labels != -100).sum(dim=1)
                    mean = losses.sum(dim=1).double() / counts.double()
                    result[batch] = torch.exp(mean).cpu().numpy()
        finally:
            model.train(was_training)
        self.info["lm_rows"] = self.info.get("lm_rows", 0) + len(rows)
        return result

    # ---------------------------------------------------------------- ONION
    def suspicion(self, victim: Victim | None, texts: Sequence[str]) -> list[np.ndarray]:
        """Each input's word suspicion ``f_i = p_0 - p_i`` (perplexity of the whole input minus that of the
        input without word ``i``; words split on whitespace): one float64 array per input, with one entry
        per word (empty for an input of at most one word; NaN where there is no perplexity, or the word
        lies past the LM's window). The LM runs on ``victim``'s model's device (None: where it is).

        Raises:
            ValueError: naming ``detector.onion.lm`` when the language model cannot be loaded
                (before any input is processed).
        """
        device = _device_of(victim.model) if victim is not None else None
        _, tokenizer = self.language_model(device)  # loads it (or fails, naming the key) before any work
        texts = list(texts)
        words = [text.split() for text in texts]
        sentences: list[str] = []
        spans: list[tuple[int, int] | None] = []
        for split in words:
            if len(split) <= 1:
                spans.append(None)
                continue
            spans.append((len(sentences), len(split)))
            sentences.append(" ".join(split))
            sentences.extend(" ".join(split[:i] + split[i + 1:]) for i in range(len(split)))
        ids = _token_ids(tokenizer, sentences, self.max_length(self.language_model(device)[0]))
        judged = np.ones(len(sentences), dtype=bool)
        for span in spans:  # a word past the window leaves what the LM sees unchanged: not judged
            if span is not None:
                first, n = span
                for i in range(first + 1, first + 1 + n):
                    judged[i] = ids[i] != ids[first]
        ppl = np.full(len(sentences), np.nan, dtype=np.float64)
        rows = np.flatnonzero(judged)
        if rows.size:
            ppl[rows] = self.perplexities([sentences[i] for i in rows], device)
        scores = []
        for span in spans:
            if span is None:
                scores.append(np.zeros(0, dtype=np.float64))
            else:
                first, n = span
                scores.append(ppl[first] - ppl[first + 1:first + 1 + n])
        self.info.update({"lm": self._lm_name, "threshold": float(self.settings.threshold),
                          "lm_max_length": self.max_length(self.language_model()[0])})
        return scores

    def repair(self, victim: Victim, texts: Sequence[str]) -> list[str]:
        """The inputs with every word of suspicion ``f_i >= threshold`` removed (remaining words joined by
        single spaces); an input of at most one word is returned as it is. One LM row per word plus one
        per input of two or more words (:meth:`suspicion`).

        Raises:
            ValueError: naming ``detector.onion.lm`` when the language model cannot be loaded
                (before any input is processed).
        """
        texts = list(texts)
        bar = self.settings.threshold
        repaired = []
        for text, scores in zip(texts, self.suspicion(victim, texts)):
            if scores.size == 0:
                repaired.append(text)
                continue
            keep = ~(scores >= bar)  # NaN compares False: kept
            repaired.append(" ".join(w for w, k in zip(text.split(), keep) if k))
        return repaired


# -------------------------------------------------------------------- helpers
def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _pad_id(tokenizer: Any) -> int:
    """Any id will do (padding is masked out): the pad token, else EOS, else 0."""
    for attribute in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attribute, None)
        if isinstance(value, int):
            return value
    return 0


def _token_ids(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    if not texts:
        return []
    encoded = tokenizer(texts, truncation=True, max_length=max_length, padding=False)
    ids = encoded["input_ids"]
    return [list(map(int, row))[:max_length] for row in ids]


def _lm_source(name: str) -> tuple[str, dict]:
    """What to give ``from_pretrained`` for ``detector.onion.lm`` ``name``, and its options.

    Raises:
        ValueError: naming the key: a folder that does not exist, or a hub id that is not cached
            when the hub is off or unreachable.
    """
    from freqlens.models.loading import (
        _hub_offline,
        _hub_reachable,
        _looks_like_path,
        resolve_model_name,
    )

    try:
        resolved = resolve_model_name(name)
    except ValueError as error:
        raise ValueError(str(error).replace("`model.name`", f"`{_KEY}`")) from None
    folder = Path(resolved).expanduser()
    if folder.exists() or _looks_like_path(resolved):
        folder = folder.resolve()
        if not folder.is_dir():
            what = "is a file, not a folder" if folder.exists() else "does not exist"
            raise ValueError(f"Expected `{_KEY}` {name!r} to be a causal language model (a hub id or a local "
                             f"folder) but the folder {folder} {what}.")
        return str(folder), {}
    from huggingface_hub import constants, try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(resolved, "config.json"), str)
    if cached:
        return resolved, ({} if not _hub_offline() else {"local_files_only": True})
    if _hub_offline():
        raise ValueError(f"Expected `{_KEY}` {name!r} to be a causal language model (a hub id or a local folder) "
                         f"but it is not available offline (HF_HUB_OFFLINE=1): there is no folder "
                         f"{Path(resolved).resolve()} and the hub model is not in the local cache "
                         f"({constants.HF_HUB_CACHE}); download it first or give a local folder.")
    if not _hub_reachable():
        raise ValueError(f"Expected `{_KEY}` {name!r} to be a causal language model (a hub id or a local folder) "
                         f"but there is no folder {Path(resolved).resolve()}, the hub model is not in the local "
                         f"cache ({constants.HF_HUB_CACHE}) and the hub ({constants.ENDPOINT}) cannot be reached; "
                         f"download it first or give a local folder.")
    return resolved, {}


def _failed(name: str, what: str, error: Exception) -> ValueError:
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ValueError(f"Expected `{_KEY}` {name!r} to load as a causal language model but {what} failed: "
                      f"{type(error).__name__}: {message}")


def _check_causal(name: str, source: str, options: dict):
    """``source``'s config; raise (naming the key) unless it is a causal-LM architecture."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(source, **options)
    except Exception as error:
        raise _failed(name, "reading its config (AutoConfig.from_pretrained)", error) from error
    causal = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(getattr(config, "model_type", None))
    if causal is None:
        raise ValueError(f"Expected `{_KEY}` {name!r} to be a causal language model but its model type "
                         f"{getattr(config, 'model_type', None)!r} has none (AutoModelForCausalLM cannot load it).")
    causal = {causal} if isinstance(causal, str) else set(causal)
    saved = getattr(config, "architectures", None) or []
    if saved and not causal & set(saved):
        raise ValueError(f"Expected `{_KEY}` {name!r} to be a causal language model but it was saved as "
                         f"{saved} (not one of {sorted(causal)}): AutoModelForCausalLM would start its language "
                         f"model head from random weights.")
    return config


def _window(config) -> int | None:
    """The positions of a language model's table (``n_positions`` / ``max_position_embeddings`` of its
    config), or None where its config says none."""
    window = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    return window if isinstance(window, int) and window > 0 else None


def _load_tokenizer(name: str, source: str, options: dict, config):
    """``source``'s tokenizer (pad token = EOS when it has none); raise (naming the key) when it fails to
    load, is empty (transformers builds an empty one for a folder without tokenizer files) or has more
    tokens than the model embeds."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **options)
    except Exception as error:
        raise _failed(name, "loading its tokenizer (AutoTokenizer.from_pretrained)", error) from error
    size, embedded = len(tokenizer), getattr(config, "vocab_size", None)
    if size < 2:
        raise ValueError(f"Expected `{_KEY}` {name!r} to load as a causal language model but loading its "
                         f"tokenizer (AutoTokenizer.from_pretrained) gave an empty vocabulary ({size} token): "
                         f"are its tokenizer files missing?")
    if isinstance(embedded, int) and size > embedded:
        raise ValueError(f"Expected `{_KEY}` {name!r} to have a tokenizer that fits its model but the tokenizer "
                         f"has {size} tokens and the model embeds {embedded}.")
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load(name: str) -> tuple[nn.Module, Any]:
    """``AutoModelForCausalLM`` (float32, eval mode) and ``AutoTokenizer`` of ``detector.onion.lm`` ``name``."""
    from transformers import AutoModelForCausalLM

    source, options = _lm_source(name)
    config = _check_causal(name, source, options)
    tokenizer = _load_tokenizer(name, source, options, config)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **options)
    except Exception as error:
        raise _failed(name, "loading its weights (AutoModelForCausalLM.from_pretrained)", error) from error
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


register_detector("onion", Onion)
