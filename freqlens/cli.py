"""The ``freqlens`` command line: a thin client of the public API."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from freqlens import __version__


def _demo(args: argparse.Namespace) -> int:
    from freqlens.demo.run import DemoConfig, run_demo

    config = DemoConfig.quick() if args.quick else DemoConfig()
    config = config.with_seed(args.seed)
    if args.epochs is not None:
        config = replace(config, train=replace(config.train, epochs=args.epochs))
    if args.balance_prior:
        config = replace(config, task=replace(config.task, balance_prior=True))
    results = run_demo(args.out, config, progress=not args.no_progress, overwrite=args.overwrite)
    summary = results["analysis"]["summary"]
    print(f"clean accuracy       {results['clean_accuracy']:.3f}")
    print(f"attack success rate  {results['attack_success_rate']:.3f}")
    print(f"false-trigger rate   {results.get('false_trigger_rate', float('nan')):.3f}")
    for view, info in summary.items():
        print(f"{view:>8} view: {info['statement']}")
    print(f"wrote {args.out}/report.html, heatmap.png, results.json "
          f"({results['timings']['total_seconds']:.0f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="freqlens",
        description="Fourier analysis of backdoor learning dynamics.",
    )
    parser.add_argument("--version", action="version", version=f"freqlens {__version__}")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileExistsError, FileNotFoundError) as error:
        print(f"freqlens: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
