"""The poisoned experiment that a ``[data]`` and an ``[attack]`` config section describe.

:func:`load_experiment` is what ``freqlens run`` calls (through
:func:`freqlens.experiment.load_dataset`): it finds what ``data.path`` is,
picks the loader for ``data.format``, poisons a clean dataset with
``attack``, and caps the splits.
"""

from __future__ import annotations

import re
from pathlib import Path

from freqlens.data.hf import is_saved_dataset
from freqlens.data.splits import PoisonedDataset

HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")  # "glue", "stanfordnlp/sst2"


def data_kind(data) -> str:
    """What ``data.path`` is: "openbackdoor", "clean" or "hf" (``data.format``, or found out).

    With ``data.format = "auto"``: a folder with ``dev-poison.csv`` is an
    OpenBackdoor folder, one written by ``DatasetDict.save_to_disk`` a
    Hugging Face dataset, another folder a clean one, and a path that does not
    exist a Hugging Face dataset name when it looks like one (``name`` or
    ``owner/name``, not absolute, not starting with ``.`` or ``~``).

    Raises:
        FileNotFoundError: naming ``data.path`` as given and as resolved, when
            it is a path (or the format needs a folder) and there is no folder there.
    """
    path = data.path
    folder = Path(path).expanduser()
    kind = data.format
    if kind == "auto":
        if (folder / "dev-poison.csv").is_file():
            kind = "openbackdoor"
        elif is_saved_dataset(path):  # DatasetDict.save_to_disk
            kind = "hf"
        elif folder.is_dir():
            kind = "clean"
        elif not folder.exists() and HUB_NAME.fullmatch(path):  # never starts with "." or "/"
            kind = "hf"
        else:
            kind = "clean"
    if kind in ("openbackdoor", "clean") and not folder.is_dir():
        what = "a file, not a folder" if folder.exists() else "nothing there"
        raise FileNotFoundError(
            f"Expected `data.path` to be a dataset folder (an OpenBackdoor folder or one with "
            f"train/dev/test files) or a Hugging Face dataset name but {path!r} is {what} "
            f"(resolved: {folder.resolve()})."
        )
    return kind


def load_experiment(data, attack, *, seed: int = 0) -> PoisonedDataset:
    """The poisoned experiment that ``data`` and ``attack`` (config sections) describe.

    An OpenBackdoor folder is loaded as it is
    (:func:`~freqlens.data.loaders.load_openbackdoor`: ``data.train``; the
    triggered dev/test sentences whose source is of the target class are
    dropped, ``info["poison_sources"]``); a clean folder
    (:func:`~freqlens.data.loaders.load_clean`) or Hugging Face dataset
    (:func:`~freqlens.data.hf.load_hf_dataset`: ``data.config_name``) is read
    with ``data.splits`` (a split named for two roles is carved disjointly,
    seeded by ``seed``, ``data.holdout``) and poisoned with ``attack``. Then
    every split is capped (``data.max_train``, ``data.max_eval``).

    Args:
        data: the ``[data]`` section (:class:`freqlens.config.DataConfig`).
        attack: the ``[attack]`` section (:class:`freqlens.config.AttackConfig`).
        seed: the seed of the carving and the caps (``train.seed`` in ``freqlens run``).

    Returns:
        The :class:`PoisonedDataset`; no evaluation split shares an example
        with the training split, and no test split with a dev split.

    Raises:
        FileNotFoundError: if ``data.path`` names no folder (and no dataset
            name), or a file is missing.
        ValueError: for settings that do not fit the data (``attack.name``,
            ``data.splits``, ``data.config_name``), hidden labels, or a
            malformed file.
    """
    from freqlens.data import hf, loaders
    from freqlens.data.attacks import make_attack, poison

    if not data.path:
        raise ValueError("Expected `data.path` (a dataset folder or name) but got an empty string.")
    kind = data_kind(data)
    text_column = data.text_column or None
    if kind == "openbackdoor":
        unused = [f"data.{key}" for key in ("splits", "config_name") if getattr(data, key)]
        if unused:
            raise ValueError(
                f"Expected no {' or '.join(f'`{u}`' for u in unused)} for the OpenBackdoor folder "
                f"{data.path} (its files are fixed; the training file is `data.train`) but got "
                f"{', '.join(f'{u} = {getattr(data, u[5:])!r}' for u in unused)}."
            )
        if attack.name != "none":
            raise ValueError(
                f"Expected `attack.name` = 'none' for the pre-poisoned folder {data.path} but got "
                f"{attack.name!r}: poison a clean dataset instead (data.format = 'clean')."
            )
    elif attack.name == "none":
        folder = Path(data.path).expanduser()
        read_as = "" if folder.exists() else (
            f" (`data.path` is read as a Hugging Face dataset name: there is no folder "
            f"{folder.resolve()})")
        raise ValueError(
            f"Expected `attack.name` (e.g. 'badnets' or 'addsent') to poison the clean dataset "
            f"{data.path}{read_as} but got 'none'."
        )
    if kind == "clean" and data.config_name:
        raise ValueError(
            f"Expected no `data.config_name` for the folder of files {data.path} (a configuration "
            f"names a Hugging Face dataset's variant) but got {data.config_name!r}."
        )
    if kind == "openbackdoor":
        dataset = loaders.load_openbackdoor(data.path, train=data.train,
                                            target_label=data.target_label,
                                            num_classes=data.num_classes)
    else:
        options = {"label_column": data.label_column, "num_classes": data.num_classes,
                   "splits": dict(data.splits), "seed": seed, "holdout": data.holdout}
        if kind == "clean":
            clean = loaders.load_clean(data.path, text_column=text_column, **options)
        else:
            clean = _load_hub(hf, data, text_column or "sentence", options)
        attack_options = {} if attack.clean_label is None else {"clean_label": attack.clean_label}
        dataset = poison(clean, make_attack(attack.name, **attack_options), rate=attack.rate,
                         target_label=data.target_label, seed=attack.seed)
    return dataset.capped(max_train=data.max_train, max_eval=data.max_eval, seed=seed)


def _load_hub(hf, data, text_column: str, options: dict):
    """:func:`~freqlens.data.hf.load_hf_dataset` by name; a dataset that cannot be found is
    reported as a ``data.path`` that names neither a folder nor a loadable dataset."""
    try:
        return hf.load_hf_dataset(data.path, text_column=text_column,
                                  config=data.config_name or None, **options)
    except (FileNotFoundError, ConnectionError) as error:
        raise FileNotFoundError(
            f"Expected `data.path` to be a dataset folder or a Hugging Face dataset name but there "
            f"is no folder {Path(data.path).expanduser().resolve()} and `datasets` could not load "
            f"{data.path!r}"
            + (f" (`data.config_name` = {data.config_name!r})" if data.config_name else "")
            + f": {error}"
        ) from error
