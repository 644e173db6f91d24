"""How large should ``early-loss``'s first phase be? Detection against the size of the training set.

``early-loss`` flags the training examples with the lowest loss after a short
first phase. On the 2,000-example CPU budget one epoch over every example
found 94-100% of the poisoned ones; on SST-2's whole training set (6,920) one
epoch found 76-77% (``benchmarks/results/sst2_defenses_cpu_full_train_2ep.md``,
rows ``early-loss@options.first_size=all``): by then the clean mapping is
learned too. This measures the first phase on a random subset of
``first_size`` examples (``freqlens.defenses.early_loss.first_phase_rows``),
scoring every training example afterwards, as ``early-loss`` does, without the
final training: precision / recall of the lowest-loss ``rate`` share against
the poison flags, and the recall among the poisoned examples the first phase
trained on and among those it did not.

Usage (from the repository root; a benchmark, not a test; about a minute a
measurement on 2 CPU cores)::

    python benchmarks/first_phase_size.py --data ../shared/data/sst-2 --attacks badnets addsent \\
        --sizes 512 1024 2048 --max-train 100000
    python benchmarks/first_phase_size.py --data ../shared/data/sst-2 --sizes 1024 --max-train 2000
    python benchmarks/first_phase_size.py --analyse

Each measurement appends one line to ``benchmarks/results/first_phase_size.jsonl``;
``--analyse`` writes ``benchmarks/results/first_phase_size.md`` from it.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "benchmarks" / "results" / "first_phase_size.jsonl"
RATES = (0.1, 0.15, 0.2, 0.3)


def measure(attack: str, size: int, max_train: int, data: str | None, seed: int) -> dict:
    from filter_signals import example_setup  # benchmarks/, beside this script

    from freqlens.defenses.abl import per_example_losses
    from freqlens.defenses.early_loss import first_phase_rows, lowest
    from freqlens.defenses.filtering import detection_metrics, subset
    from freqlens.training import train

    config, dataset, model, encodings, labels, _ = example_setup(attack, data, seed,
                                                                 (f"data.max_train={max_train}",))
    poison = np.asarray(dataset.train.poison, dtype=bool)
    rows = first_phase_rows(len(labels), size, seed)
    began = time.perf_counter()
    train(model, subset(encodings, rows), labels[rows], replace(config.train, epochs=1), progress=False)
    losses = per_example_losses(model, encodings, labels, batch_size=64)
    seen = np.zeros(len(labels), dtype=bool)
    seen[rows] = True
    record = {"attack": attack, "first_size": size, "train_examples": int(len(labels)), "seed": seed,
              "first_phase_examples": int(len(rows)), "seconds": round(time.perf_counter() - began, 1)}
    for rate in RATES:
        flagged = lowest(losses, rate)
        m = detection_metrics(flagged, poison)
        record[f"rate_{rate}"] = [round(m["precision"], 3), round(m["recall"], 3)]
        if rate == 0.2:
            record["recall_seen"] = round(float((flagged & poison & seen).sum() / max((poison & seen).sum(), 1)), 3)
            record["recall_unseen"] = (round(float((flagged & poison & ~seen).sum() / (poison & ~seen).sum()), 3)
                                       if (poison & ~seen).any() else None)
    return record


def analyse() -> Path:
    records = [json.loads(line) for line in RECORDS.read_text().splitlines() if line.strip()]
    records.sort(key=lambda r: (r["attack"], r["train_examples"], r["first_size"]))
    lines = [
        "# early-loss: detection against the size of the first phase",
        "",
        "Command: `python benchmarks/first_phase_size.py --data ../shared/data/sst-2 --attacks badnets addsent "
        "--sizes 512 1024 2048 --max-train 100000`, the same with `--sizes 1024 --max-train 2000`, "
        "then `--analyse`  ",
        f"Machine (of --analyse): CPU ({platform.machine()}); Python {platform.python_version()}",
        "",
        "all-MiniLM-L6-v2, the example configs (train.lr 4e-5, batch 32), seed 0, one epoch on `first size` "
        "training examples (a seeded random subset), then every training example's eval-mode loss. Each rate "
        "cell: precision / recall of the lowest-loss share. seen / unseen: recall at rate 0.2 among the "
        "poisoned examples the first phase trained on / did not. A first phase over the whole set is in "
        "`sst2_defenses_cpu_full_train_2ep.md` (rows `early-loss@options.first_size=all`: recall 0.77 "
        "BadNets, 0.76 AddSent on 6,920 examples) and `filter_signals.md` (eval 1: 0.94 / 1.00 on 2,000).",
        "",
        "| attack | training examples | first size | " + " | ".join(f"rate {r}" for r in RATES)
        + " | seen / unseen | s |",
        "|---|---|---|" + "---|" * len(RATES) + "---|---|",
    ]
    for r in records:
        cells = " | ".join(f"{p:.2f} / {q:.2f}" for p, q in (r[f"rate_{rate}"] for rate in RATES))
        unseen = "–" if r.get("recall_unseen") is None else f"{r['recall_unseen']:.2f}"
        lines.append(f"| {r['attack']} | {r['train_examples']} | {r['first_phase_examples']} | {cells} | "
                     f"{r['recall_seen']:.2f} / {unseen} | {r['seconds']:.0f} |")
    path = RECORDS.with_suffix(".md")
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attacks", nargs="+", default=["badnets", "addsent"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[1024])
    parser.add_argument("--max-train", type=int, default=100000, help="data.max_train (100000: the whole set)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default="", help="folder holding <attack>/ (default: the configs' data.path)")
    parser.add_argument("--analyse", action="store_true", help="only tabulate the recorded measurements")
    args = parser.parse_args()
    if not args.analyse:
        from filter_signals import append_records  # benchmarks/, beside this script

        append_records(RECORDS, (measure(attack, size, args.max_train, args.data or None, args.seed)
                                 for attack in args.attacks for size in args.sizes))
    print(analyse().read_text())


if __name__ == "__main__":
    main()
