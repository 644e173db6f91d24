"""Make the figures of the README and the docs from real runs; one command for all of them.

    python figures/make_figures.py --demo runs/demo --runs runs/bench-sst2-defenses/*-s0

``--demo``: a ``freqlens demo`` run directory (made with ``freqlens demo --out
runs/demo`` if it does not exist). ``--runs``: run directories of the defense
benchmark (``python benchmarks/sst2_defenses.py --budget cpu``). Writes into
``figures/`` (PDF and PNG each), copies each run's ``results.json`` to
``figures/data/``, and rewrites ``figures/README.md`` with the command and the
source of every figure. The figures are drawn by the library's plot functions;
this script only chooses them.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from freqlens import plots  # noqa: E402
from freqlens.compare import groups, load_runs  # noqa: E402

HERE = Path(__file__).resolve().parent
COMPARED = ("vanilla", "lora", "muscle", "muscle-paper", "reference-only")  # the convergence-spectrum lines


def short(group: str) -> str:
    """``sst-2/addsent (mix/0.1/train-poison.csv)`` -> ``sst2-addsent``."""
    name = group.split(" ")[0].replace("sst-2/", "sst2-").replace("/", "-")
    return "demo" if not name.startswith("sst2") else name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="runs/demo", help="a freqlens demo run directory")
    parser.add_argument("--runs", nargs="*", default=[], help="defense-benchmark run directories")
    args = parser.parse_args()
    command = "python figures/make_figures.py " + " ".join(sys.argv[1:])
    demo = Path(args.demo)
    if not (demo / "results.json").is_file():
        from freqlens.demo.run import run_demo

        run_demo(demo, progress=False, overwrite=True)
    runs, problems = load_runs([demo, *args.runs])
    for problem in problems:
        print(f"left out {problem}", file=sys.stderr)
    data = HERE / "data"
    data.mkdir(exist_ok=True)
    entries = []

    def save(fig, name: str, what: str, sources: list) -> None:
        plots.save_figure(fig, HERE / name)
        plt.close(fig)
        entries.append((name, what, sources))

    for run in runs:
        target = data / f"{short(run.group)}-{run.label.replace(' ', '_')}.json"
        shutil.copy(run.directory / "results.json", target)
        run.results_copy = target.relative_to(HERE)

    for group, members in groups(runs).items():
        stem = short(group)
        if stem == "demo":
            run = members[0]
            save(plots.plot_heatmaps(run.analysis), "demo_heatmap", "the paper's heat map, joint view, three widths",
                 [run])
            save(plots.plot_convergence_spectrum(run.analysis), "demo_convergence_spectrum",
                 "steps to converge per frequency band, clean and backdoor probes", [run])
            continue
        chosen = [m for m in members if m.label in COMPARED]
        if chosen:
            save(plots.plot_convergence_spectrum({m.label: m.analysis for m in chosen}),
                 f"{stem}_convergence_spectrum", "convergence spectrum per defense (one line style per run)", chosen)
        vanilla = next((m for m in members if m.label == "vanilla"), None)
        if vanilla is not None:
            save(plots.plot_band_spectrum(vanilla.analysis), f"{stem}_vanilla_band_spectrum",
                 "band spectrum over training, undefended", [vanilla])
    sst2 = [r for r in runs if short(r.group) != "demo"]
    if sst2:
        records = [{"attack": short(r.group).replace("sst2-", ""), "defense": r.label, "cacc": r.metric("cacc"),
                    "asr": r.metric("asr"), "false_trigger_rate": r.metric("false_trigger_rate")} for r in sst2]
        save(plots.plot_defense_comparison(records), "sst2_defense_comparison",
             "CACC, ASR and false-trigger rate per defense and attack", sst2)

    lines = ["# Figures", "",
             "Every figure here comes from a real run, drawn by `freqlens.plots`; each is a PDF and a PNG. "
             "All of them are made by one command:", "", f"    {command}", "",
             "where the demo run comes from `freqlens demo --out runs/demo` (seed 0) and the SST-2 runs from "
             "`python benchmarks/sst2_defenses.py --budget cpu` (all-MiniLM-L6-v2, 2,000 training examples, "
             "2 epochs, 2 CPU cores; table in `benchmarks/results/sst2_defenses_cpu.md`). The runs' "
             "`results.json` files are in `data/`.", "",
             "| figure | what it shows | runs (results.json) |", "| --- | --- | --- |"]
    for name, what, sources in entries:
        files = ", ".join(f"`{r.results_copy}`" for r in sources[:6]) + (" ..." if len(sources) > 6 else "")
        lines.append(f"| `{name}.png` | {what} | {files} |")
    lines += ["", "Older figures made by earlier commands:", "",
              "| figure | command | results |", "| --- | --- | --- |",
              "| `sst2-vanilla-gpu/<attack>-heatmap.png` | `benchmarks/sst2_vanilla_gpu.sh` on an H200 "
              "(all-MiniLM-L6-v2, full SST-2 training set, 10 epochs; see "
              "`benchmarks/results/sst2_vanilla_gpu.md`), `heatmap.png` of each run | "
              "`sst2-vanilla-gpu/<attack>-results.json` |",
              "", "Folders with their own script, command and README:", "",
              "- `spectrum/`: the instrument's figures (learning-speed spectra, static spectra, eigenmode heat "
              "maps), `figures/make_spectrum_figures.py`;",
              "- `defenses/`: each defense's learning-speed spectrum beside vanilla's, per attack, "
              "`figures/make_defense_figures.py`."]
    (HERE / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
