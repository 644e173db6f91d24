"""What names the dataset a run trained on: ``results.json``'s ``dataset.identity``.

``freqlens report`` groups runs by it, so two datasets whose folders share a
name (OpenBackdoor lays them out ``poison_data/<dataset>/<target>/<attack>/``)
or two poisoned training files are never compared with each other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path


def dataset_identity(config: Mapping, info: Mapping | None = None) -> dict:
    """What names the dataset a run trained on, for ``results.json`` (``dataset.identity``).

    Call it where the run is (paths resolve against the working directory of
    the run). OpenBackdoor folders are commonly laid out
    ``poison_data/<dataset>/<target>/<attack>/``, so a folder name alone does
    not name a dataset: the identity holds the resolved folder, the training
    file and a hash of its bytes.

    Args:
        config: the config as run (``ExperimentConfig.to_dict()``), with a
            ``data`` section (``path``, ``train``, ``format``).
        info: the loaded dataset's ``info`` (its ``path`` and ``files``), if any.

    Returns:
        ``{"name": readable short name (the last three folders, and the
        training file), "path": the absolute folder (or the hub name as
        given), "train_file": the absolute training file or None,
        "train_sha256": the SHA-256 of its bytes or None}``.
    """
    data, info = dict(config.get("data", {})), dict(info or {})
    given = str(info.get("path") or data.get("path") or "")
    local = Path(given).expanduser()
    if not given or not local.exists():  # a hub dataset name
        return {"name": given or "unnamed dataset", "path": given, "train_file": None, "train_sha256": None}
    root = local.resolve()
    train = info.get("files", {}).get("train")
    candidates = [Path(train)] if train else []
    if root.is_dir():
        if data.get("train") and (root / data["train"]).is_file():
            candidates.append(root / data["train"])
        candidates += sorted(p for p in root.glob("train.*") if p.suffix in (".csv", ".tsv", ".jsonl"))
    else:
        candidates.append(root)
    train_file = next((p.expanduser().resolve() for p in candidates if p.is_file()), None)
    digest = None
    if train_file is not None:
        sha = hashlib.sha256()
        with open(train_file, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                sha.update(block)
        digest = sha.hexdigest()
    folder = root if root.is_dir() else root.parent
    name = "/".join(folder.parts[-3:])
    if train_file is not None and root.is_dir():
        name += f" ({train_file.relative_to(root).as_posix() if train_file.is_relative_to(root) else train_file})"
    return {"name": name, "path": str(root), "train_file": None if train_file is None else str(train_file),
            "train_sha256": digest}
