"""Which per-example signal of a short first phase picks out the poisoned training examples?

The measurement behind the ``filter`` defense's design (docs/defenses.md,
"filter"). For each attack, one vanilla fine-tuning run of the example config
(``analysis/sst2-<attack>.toml``: all-MiniLM-L6-v2, 2,000 training examples,
10% poisoned) logs, for every training example:

- its cross-entropy at its own training forward pass, per epoch (free: the
  pass happens anyway);
- its cross-entropy in eval mode after each epoch (one extra forward pass
  over the training set); each epoch is its own short run with a linear
  learning-rate decay (from ``train.lr`` in the first, from ``train.lr / 2``
  in the second), so after epoch 1 the model is exactly ``early-loss``'s
  after its first phase (``first_epochs = 1``);

and saves them with the labels and the poison flags to
``benchmarks/results/filter_signals/<attack>.npz``. ``--analyse`` then
scores flagging rules on those arrays (precision, recall, F1 against the
poison flags) and writes ``benchmarks/results/filter_signals.md``.

Usage (from the repository root; a benchmark, not a test)::

    python benchmarks/filter_signals.py --data ../shared/data/sst-2 --attacks badnets addsent stylebkd synbkd
    python benchmarks/filter_signals.py --analyse
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "filter_signals"
ATTACKS = ("badnets", "addsent", "stylebkd", "synbkd")


def example_setup(attack: str, data: str | None, seed: int, overrides: tuple[str, ...] = ()):
    """The example config ``analysis/sst2-<attack>.toml`` (with ``overrides``, the seed and ``data``'s
    folder), seeded: ``(config, dataset, model, encodings, labels, tokenizer)``, the training set
    tokenised."""
    from freqlens.config import ExperimentConfig
    from freqlens.data.experiment import load_experiment
    from freqlens.data.splits import encode
    from freqlens.models.loading import load_model
    from freqlens.training import seed_everything

    overrides = [*overrides, f"train.seed={seed}"]
    if data:
        overrides.append(f"data.path={Path(data) / attack}")
    config = ExperimentConfig.from_toml(ROOT / "analysis" / f"sst2-{attack}.toml", overrides)
    seed_everything(seed)
    dataset = load_experiment(config.data, config.attack, seed=seed)
    tokenizer, model = load_model(config.model, num_classes=config.data.num_classes)
    encodings = encode(tokenizer, dataset.train, config.model.max_length)
    return config, dataset, model, encodings, np.asarray(dataset.train.labels), tokenizer


def append_records(path: Path, records) -> None:
    """Append each record of the iterable ``records`` (dicts) to the JSON-lines file ``path`` as soon as it
    is measured, and print it: a benchmark killed midway keeps every measurement it finished."""
    for record in records:
        print(json.dumps(record), flush=True)
        with open(path, "a") as file:
            file.write(json.dumps(record) + "\n")


def record(attack: str, data: str | None, epochs: int, seed: int) -> Path:
    from freqlens.defenses.abl import per_example_losses
    from freqlens.training import train

    config, dataset, model, encodings, labels, _ = example_setup(attack, data, seed)
    n = len(labels)
    passes = np.full((epochs, n), np.nan)
    evals = np.full((epochs, n), np.nan)
    epoch = 0

    def logged(model, batch, labels, rows):  # the loss of each example at its own training forward pass
        logits = model(**batch).logits.float()
        losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        passes[epoch, rows.numpy()] = losses.detach().cpu().numpy()
        return losses.mean()

    began = time.perf_counter()
    for epoch in range(epochs):  # epoch 1 is exactly early-loss's first phase (first_epochs = 1)
        cfg = replace(config.train, epochs=1, seed=seed + epoch, lr=config.train.lr * (1 - epoch / epochs))
        train(model, encodings, labels, cfg, progress=False, loss_fn=logged)
        evals[epoch] = per_example_losses(model, encodings, labels)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{attack}.npz"
    np.savez_compressed(path, passes=passes, evals=evals, labels=labels, poison=dataset.train.poison,
                        seconds=time.perf_counter() - began)
    print(f"{attack}: {n} examples, {int(dataset.train.poison.sum())} poisoned, "
          f"{time.perf_counter() - began:.0f} s", flush=True)
    return path


def prf(flagged: np.ndarray, poison: np.ndarray) -> tuple[float, float, float]:
    tp = int((flagged & poison).sum())
    p = tp / max(int(flagged.sum()), 1)
    r = tp / max(int(poison.sum()), 1)
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


RATES = (0.1, 0.15, 0.2, 0.3)


def lowest(scores: np.ndarray, rate: float) -> np.ndarray:
    from freqlens.defenses.early_loss import lowest as flag_lowest

    return flag_lowest(scores, rate)


def analyse(attacks) -> Path:
    """Score the flagging rules on the saved arrays; write ``filter_signals.md`` (and .json)."""
    lines = ["# Which first-phase signal flags the poisoned training examples?", "",
             "Command: `python benchmarks/filter_signals.py --data ../shared/data/sst-2` then `--analyse`  ",
             f"Machine: CPU; torch {torch.__version__}; Python {platform.python_version()}; {platform.platform()}",
             "", "all-MiniLM-L6-v2, the example configs (2,000 training examples, 200 poisoned, train.lr 4e-5, "
             "batch 32), seed 0. Each cell: precision / recall of flagging the `rate` share of training examples "
             "with the lowest loss. *pass e*: the loss at the example's own training forward pass in epoch e "
             "(free); *eval e*: eval-mode loss after epoch e (one forward pass over the training set). Each epoch "
             "is a short run of its own with a linear lr decay (from 4e-5, then from 2e-5): after epoch 1 the "
             "model is `early-loss`'s after its first phase. Poison rate 0.1: a random flag has precision 0.10.",
             "",
             "| attack | signal | " + " | ".join(f"rate {r:g}" for r in RATES) + " |",
             "|---|---|" + "---|" * len(RATES)]
    summary = {}
    for attack in attacks:
        path = OUT / f"{attack}.npz"
        if not path.is_file():
            continue
        d = np.load(path)
        poison = d["poison"].astype(bool)
        signals = {f"pass {e + 1}": d["passes"][e] for e in range(len(d["passes"]))}
        signals |= {f"eval {e + 1}": d["evals"][e] for e in range(len(d["evals"]))}
        summary[attack] = {}
        for name, scores in signals.items():
            cells = []
            for rate in RATES:
                p, r, f = prf(lowest(scores, rate), poison)
                summary[attack][f"{name} @ {rate:g}"] = {"precision": p, "recall": r, "f1": f}
                cells.append(f"{p:.2f} / {r:.2f}")
            lines.append(f"| {attack} | {name} | " + " | ".join(cells) + " |")
    target = ROOT / "benchmarks" / "results" / "filter_signals.md"
    target.write_text("\n".join(lines) + "\n")
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1))
    print(target.read_text())
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS)
    parser.add_argument("--data", default=None, help="folder holding <attack>/ (default: the configs')")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--analyse", action="store_true", help="only score rules on the saved arrays")
    args = parser.parse_args()
    if not args.analyse:
        torch.set_num_threads(2)
        for attack in args.attacks:
            record(attack, args.data, args.epochs, args.seed)
    analyse(args.attacks)


if __name__ == "__main__":
    main()
