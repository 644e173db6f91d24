"""The ``freqlens`` command line: a thin client of the public API."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from freqlens import __version__


def _demo(args: argparse.Namespace) -> int:
    _check_out(args)  # before torch and the demo load
    from freqlens.demo.run import DemoConfig, run_demo

    config = DemoConfig.quick() if args.quick else DemoConfig()
    config = config.with_seed(args.seed)
    if args.epochs is not None:
        config = replace(config, train=replace(config.train, epochs=args.epochs))
    if args.balance_prior:
        config = replace(config, task=replace(config.task, balance_prior=True))
    results = run_demo(args.out, config, progress=not args.no_progress, overwrite=args.overwrite)
    _print_summary(results, args.out)
    return 0


def _run(args: argparse.Namespace) -> int:
    from freqlens.config import ExperimentConfig
    from freqlens.experiment import run_experiment

    if args.list_keys:
        return _list_keys(args)
    missing = [what for what, value in (("CONFIG", args.config), ("--out", args.out)) if value is None]
    if missing:
        raise ValueError(f"Expected {' and '.join(missing)} for `freqlens run` (or --list-keys to list the "
                         "settings) but got none.")
    config = ExperimentConfig.from_toml(args.config, overrides=args.set)
    # under torchrun / accelerate launch every process runs this; rank 0 writes and returns the results
    results = run_experiment(config, args.out, progress=not args.no_progress, overwrite=args.overwrite,
                             resume=args.resume, keep_checkpoint=args.keep_checkpoint)
    _print_summary(results, args.out)
    return 0


def _check_out(args: argparse.Namespace) -> None:
    """Refuse a ``freqlens demo --out`` that already holds a recording, at once (before anything
    loads), in the command line's words (``freqlens run`` checks in ``run_experiment``)."""
    meta = Path(args.out) / "trajectory" / "meta.json"
    if meta.exists() and not args.overwrite:
        raise FileExistsError(f"--out {args.out} already holds a run ({meta} exists); {_OUT_ADVICE[args.command]}.")


_OUT_ADVICE = {
    "run": "pass --overwrite to replace it, --resume to continue it, or choose another --out",
    "demo": "pass --overwrite to replace it or choose another --out",
}


def _cli_words(error: Exception, command: str) -> str:
    """An error message with the Python API's advice (``overwrite=True``) put in CLI flags."""
    message = str(error)
    advice = message.find("pass overwrite=True")
    if isinstance(error, FileExistsError) and advice >= 0:
        message = message[:advice] + _OUT_ADVICE.get(command, "pass --overwrite to replace it") + "."
    return message


def _report(args: argparse.Namespace) -> int:
    from freqlens.compare import load_runs, write_comparison

    runs, problems = load_runs(args.runs)
    for problem in problems:
        print(f"freqlens: left out {problem}", file=sys.stderr)
    paths = write_comparison(runs, args.out, problems=problems, view=args.view)
    print(f"compared {len(runs)} run(s) in {len({r.group for r in runs})} group(s); wrote "
          f"{paths['html']}, {paths['markdown'].name}, {paths['csv'].name} and figures/")
    return 0


def _validate(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if not args.out.strip():
        raise ValueError("--out is empty; expected a directory (created if missing).")
    if out.exists() and not out.is_dir():  # at once, in the command line's words
        raise ValueError(f"--out {args.out} is a file; expected a directory (created if missing).")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--out {args.out} cannot be created as a directory "
                         f"({error.strerror or error}).") from error
    from freqlens.validate import validate

    results = validate(out, quick=args.quick, seed=args.seed, progress=not args.no_progress,
                       control=args.control)
    verdict = "all checks passed" if results["passed"] else "a check FAILED"
    print(f"{verdict}; wrote {out / 'validation.json'} and {out / 'validation.png'} "
          f"({results['seconds']:.0f} s)")
    return 0 if results["passed"] else 1


def _print_summary(results: dict | None, out: str) -> None:
    """What the run measured and wrote, on stdout (warnings on stderr); nothing for None, what
    the processes other than rank 0 of a data-parallel run get, so that it is printed once."""
    if results is None:
        return

    def number(key: str) -> str:
        value = results.get(key)
        return "n/a" if value is None else f"{value:.3f}"

    print(f"clean accuracy (CACC)      {number('cacc')}")
    print(f"attack success rate (ASR)  {number('asr')}")
    print(f"false-trigger rate         {number('false_trigger_rate')}")
    for name, entry in (results.get("detectors") or {}).items():
        if entry.get("error"):
            print(f"detector {name}: failed ({entry['error']})")
            continue
        rates = "" if entry.get("frr") is None else f"FRR {entry['frr']:.3f}, FAR {entry['far']:.3f}; "
        after = ", ".join(f"{label} {entry[key]:.3f}" for label, key in (("CACC", "cacc"), ("ASR", "asr"))
                          if entry.get(key) is not None)
        print(f"detector {name}: {rates}after it {after}")
    for view, info in results["analysis"]["summary"].items():
        print(f"{view:>8} view: {info['statement']}")
    timings = results["timings"]
    share = timings.get("recording_share")
    share_text = "" if share is None else f", recording {100 * share:.1f}% of training wall time"
    print(f"wrote {out}/report.html, heatmap.png, results.json "
          f"({timings['total_seconds']:.0f} s{share_text})")
    for warning in results.get("warnings", []):
        print(f"freqlens: warning: {warning}", file=sys.stderr)


def _list_keys(args: argparse.Namespace) -> int:
    """Print ``section.key = default  # meaning`` for every setting ``freqlens run`` reads; a CONFIG
    or ``--set`` given first is read, so a defense it names by import path (``module:Class``) is
    registered and its ``defense.options`` are listed too."""
    from freqlens.config import ExperimentConfig, list_settings
    from freqlens.settings import apply_override

    if args.config is not None:
        ExperimentConfig.from_toml(args.config, overrides=args.set)
    elif args.set:
        data: dict = {}
        for override in args.set:
            apply_override(data, override)
        ExperimentConfig.from_dict(data)
    for setting in list_settings():
        print(setting.line())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="freqlens",
        description="Fourier analysis of backdoor learning dynamics: record a model's outputs on "
        "clean and triggered probe sets while it trains, measure how fast each frequency band of the "
        "clean and the backdoor mapping converges, and compare defenses.",
        epilog="examples:\n"
        "  freqlens demo --out runs/demo\n"
        "  freqlens run analysis/sst2-addsent.toml --out runs/addsent --set defense.name=muscle\n"
        "  freqlens report runs/demo runs/addsent --out runs/report\n"
        "  freqlens validate --out runs/validate",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"freqlens {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="train a tiny BERT on the embedded poisoned task and analyse it (offline, CPU)",
        description="Generate a poisoned sentiment task, train a tiny BERT on it while recording "
        "its outputs on clean, backdoor and control probe sets, and write the frequency analysis "
        "(heat maps, results.json, report.html) into --out.",
    )
    demo.add_argument("--out", required=True, help="output directory")
    demo.add_argument("--seed", type=int, default=0, help="seed of the task, model and training (default 0)")
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (default 8; 2 with --quick)")
    demo.add_argument("--balance-prior", action="store_true",
                      help="keep the poisoned training set's label prior at 50/50")
    demo.add_argument("--quick", action="store_true", help="tiny settings, a few seconds (for tests)")
    demo.add_argument("--overwrite", action="store_true", help="replace a trajectory already in --out")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(handler=_demo)
    run = commands.add_parser(
        "run",
        help="one experiment from a TOML config: train, record, analyse, report",
        description="Load the model and data named in CONFIG, fine-tune with the recorder on, "
        "evaluate CACC / ASR / false-trigger rate, analyse the recording and write results.json, "
        "figures and report.html into --out. See analysis/*.toml for examples.",
    )
    run.add_argument("config", nargs="?", help="a TOML experiment config")
    run.add_argument("--out", help="output directory (required unless --list-keys)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field, e.g. --set train.epochs=3 (repeatable)")
    resumption = run.add_mutually_exclusive_group()
    resumption.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    resumption.add_argument("--resume", action="store_true",
                            help="continue a killed run in --out from its last epoch checkpoint "
                                 "(CONFIG must equal the config stored there)")
    run.add_argument("--keep-checkpoint", action="store_true",
                     help="keep --out/checkpoint/ (the last epoch's training state) after the run finishes")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--list-keys", action="store_true",
                     help="print every config key (section.key, nested tables such as defense.ga.mu included) "
                          "with its default and meaning, and exit; CONFIG and --out are then not needed (given "
                          "CONFIG or --set defense.name=module:Class, that defense's options are listed too)")
    run.set_defaults(handler=_run)
    report = commands.add_parser(
        "report",
        help="compare runs (defenses, attacks) in one HTML + Markdown report and a CSV table",
        description="Read the run directories written by `freqlens run` or `freqlens demo`, re-analyse "
        "their recordings, group them by experiment (dataset folder and training file, attack, target, "
        "caps, model: only the defense and how it ran may differ within a group), and write report.html (self-contained, "
        "opens offline), report.md, runs.csv and figures/ (PDF and PNG) into --out. Each defense is "
        "compared with the undefended (vanilla) run of its group. A killed run (a trajectory without "
        "results.json) is included and marked partial. A directory that cannot be used is "
        "named with the reason, and the report covers the rest.",
    )
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (finished, or partial: a trajectory without results.json)")
    report.add_argument("--out", required=True, help="output directory")
    report.add_argument("--view", choices=("joint", "separate"), default="joint",
                        help="which view the convergence tables use (default joint)")
    report.set_defaults(handler=_report)
    validation = commands.add_parser(
        "validate",
        help="check the instrument against published Frequency Principle results (CPU, a few minutes)",
        description="Run three checks on data that ships with the packages and write validation.json "
        "(each check: what it reproduces, the paper, the numbers, threshold, pass/fail) and "
        "validation.png (a panel per check) into --out: (a) Xu et al.'s 1-D experiment, an MLP fits a "
        "sum of cosines from low to high frequency (Spearman rho >= 0.9); (b) the filtering method on "
        "scikit-learn's digits, low-frequency error learned first at every width (bootstrap interval "
        "excludes a tie); (c) planted low and high eigenmodes, freqlens recovers which is learned first "
        "in >= 95% of 20 seeds at 128 probes, and the probe size below which it does not. Exit code 0 "
        "when every check passes, 1 when one fails.",
    )
    validation.add_argument("--out", required=True, help="output directory (created if missing)")
    validation.add_argument("--quick", action="store_true", help="smaller settings, about 20 s (for tests)")
    validation.add_argument("--seed", type=int, default=0, help="base seed of every check (default 0)")
    validation.add_argument("--control", action="store_true",
                            help="negative control: every model is a lookup table without spectral bias, "
                                 "so every check must FAIL (exit code 1)")
    validation.add_argument("--no-progress", action="store_true", help="no line per check as it finishes")
    validation.set_defaults(handler=_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("freqlens: interrupted (what was recorded so far is on disk)", file=sys.stderr)
        return 130
    except Exception as error:  # one clear line; --debug shows the traceback
        if args.debug:
            raise
        kind = "" if isinstance(error, (ValueError, FileExistsError, FileNotFoundError)) else f"{type(error).__name__}: "
        print(f"freqlens: error: {kind}{_cli_words(error, args.command)} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
