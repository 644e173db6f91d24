"""What names the dataset a run trained on: ``results.json``'s ``dataset.identity``.

``freqlens report`` groups runs by it, so two datasets whose folders share a
name (OpenBackdoor lays them out ``poison_data/<dataset>/<target>/<attack>/``)
or two poisoned training files are never compared with each other, and
``freqlens run --resume`` refuses to continue a run whose training data
changed. The identity is computed once, when the run starts, from the file
the loader actually read; it is never recomputed later (a file may have
changed since).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

#: The fields of an identity, in order; all are present (None where unknown).
FIELDS = ("name", "path", "train_file", "train_sha256", "train_fingerprint")


def file_sha256(*paths: str | Path) -> str:
    """The SHA-256 (hex) of the bytes of the files ``paths`` one after the other, read in 1 MiB blocks."""
    sha = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                sha.update(block)
    return sha.hexdigest()


def dataset_identity(config: Mapping, info: Mapping | None = None) -> dict:
    """What names the dataset a run trained on, for ``results.json`` (``dataset.identity``).

    Call it when the run starts, right after the data is loaded. The training
    file is the one the loader read, ``info["files"]["train"]`` (both
    :func:`~freqlens.data.loaders.load_openbackdoor` and
    :func:`~freqlens.data.loaders.load_clean` record it; a Hugging Face
    dataset read from local Arrow files may list several): its bytes are hashed.
    Nothing is guessed from the folder (no ``train.*`` is looked for). Without a
    training file (a Hugging Face dataset), the ``datasets`` fingerprint of the
    training split, ``info["fingerprints"]["train"]``, stands in for the hash
    where the loader recorded one; else the identity has no hash and runs are
    told apart by their config alone.

    Args:
        config: the config as run (``ExperimentConfig.to_dict()``), with a
            ``data`` section (its ``path`` names the dataset when ``info`` does not).
        info: the loaded dataset's ``info``: ``path``, ``files`` (role -> file
            read) and ``fingerprints`` (role -> ``datasets`` fingerprint), where known.

    Returns:
        ``{"name": readable short name (the training file's folder, its last
        three parts, and the file), "path": the absolute dataset folder (or
        the name as given, for a hub dataset), "train_file": the absolute
        training file (a list where there are several) or None,
        "train_sha256": the SHA-256 of its bytes (of all of them, in order)
        or None, "train_fingerprint": the training split's ``datasets``
        fingerprint or None}``.

    Raises:
        FileNotFoundError: ``info["files"]["train"]`` names something that is not a file.
    """
    data, info = dict(config.get("data", {}) or {}), dict(info or {})
    given = str(info.get("path") or data.get("path") or "")
    local = Path(given).expanduser() if given else None
    root = local.resolve() if local is not None and local.exists() else None
    train = (info.get("files") or {}).get("train")
    if train:
        read = [Path(f).expanduser().resolve() for f in ([train] if isinstance(train, (str, Path)) else train)]
        for file in read:
            if not file.is_file():
                raise FileNotFoundError(
                    f"Expected the training file the dataset was read from, {file}, to be a file but it is not.")
        train_file = read[0]
        folder = root if root is not None and root.is_dir() else train_file.parent
        inside = train_file.is_relative_to(folder)
        shown = train_file.relative_to(folder).as_posix() if inside else str(train_file)
        name = _short(folder) + f" ({shown}{f' and {len(read) - 1} more' if len(read) > 1 else ''})"
        return {"name": name, "path": str(folder),
                "train_file": str(train_file) if len(read) == 1 else [str(f) for f in read],
                "train_sha256": file_sha256(*read), "train_fingerprint": None}
    fingerprint = (info.get("fingerprints") or {}).get("train")
    path = str(root) if root is not None else given
    name = _short(root) if root is not None else (given or "unnamed dataset")
    return {"name": name, "path": path or None, "train_file": None, "train_sha256": None,
            "train_fingerprint": str(fingerprint) if fingerprint else None}


def _short(folder: Path) -> str:
    """The last three parts of ``folder`` joined by "/" (its root left out: ``/tmp/data`` -> ``tmp/data``)."""
    return "/".join(part for part in folder.parts[-3:] if part != folder.anchor)


def identity_changes(stored: Mapping, now: Mapping) -> list[str]:
    """What differs between two identities, one readable entry per field
    (``"train_sha256 (stored -> now)"``); empty when they name the same data."""
    return [f"{key} ({stored.get(key)!r} -> {now.get(key)!r})"
            for key in FIELDS if key != "name" and stored.get(key) != now.get(key)]
