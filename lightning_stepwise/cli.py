"""The ``lightning-stepwise`` command."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from lightning_stepwise.demo import run_demo

    start = time.perf_counter()
    run_demo(max_steps=args.max_steps, output=args.output, seed=args.seed, batch_size=args.batch_size,
             init_scale=args.init_scale, every_n_steps=args.every_n_steps, quiet=args.quiet)
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-stepwise`` console script.

    Example:
        >>> main(["--version"])  # doctest: +SKIP
        lightning-stepwise 0.1.0
    """
    from lightning_stepwise import __version__

    parser = argparse.ArgumentParser(prog="lightning-stepwise", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lightning-stepwise {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="train a small Lightly Barlow Twins model on the embedded digits with StepwiseMonitor()")
    demo.add_argument("--max-steps", type=int, default=800, help="optimizer steps (7 per epoch at batch 256)")
    demo.add_argument("--output", default="stepwise-demo", help="folder for logs and files")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--batch-size", type=int, default=256)
    demo.add_argument("--init-scale", type=float, default=0.5,
                      help="multiply initial weights (small init, as in the paper, makes the steps sharper; "
                           "1.0: PyTorch's default init)")
    demo.add_argument("--every-n-steps", type=int, default=50, help="steps between spectrum measurements")
    demo.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
