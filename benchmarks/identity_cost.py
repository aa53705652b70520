"""What mode identity costs per measurement window, at a wide projector.

    python benchmarks/identity_cost.py                       # CPU, d = 2048 and 8192, window 1024, k = 64
    python benchmarks/identity_cost.py --device cuda         # device times on a GPU

With identity tracking (``StepwiseMonitor(mode_directions=64)``, the default) each window also yields its
top-k eigen-directions, matched to the previous ones. Per window this prints:

- device work added (device time): the Gram route keeps the centred rows in float32 while it forms the
  Gram matrix (``Gram + rows`` against ``Gram``), and copies them to the host (``rows to host``);
- host work added, in the worker thread and at recording (host time, off the training step): ``eigh``
  instead of ``eigvalsh`` of the ``N x N`` matrix, the directions ``Zcᵀ U`` (``d x k``), the matching
  (:class:`~lightning_stepwise.mode_identity.ModeMatcher`) and onset detection per identity on a history
  of 1,000 rows;
- memory: what stays between windows (the matcher's directions, about ``2k x d``, and one direction per
  learned mode) and the transient copy of the rows (pinned host memory on CUDA).
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch
from spectrum_cost import timed  # the benchmarks' folder is on sys.path when run as a script

from lightning_stepwise.accumulators import CovarianceRows
from lightning_stepwise.mode_identity import ModeMatcher, follow_modes
from lightning_stepwise.onsets import OnsetTracker
from lightning_stepwise.synthetic import mode_family_run


def measure(d: int, args: argparse.Namespace) -> dict[str, float]:
    device, n, k = args.device, args.window, args.k
    g = torch.Generator().manual_seed(0)
    rows = (torch.randn(n, d, generator=g) * torch.logspace(0, -4, d)).to(device)
    acc = CovarianceRows(d, capacity=n, device=device)
    acc.update(rows)
    out = {"d": d, "gram_ms": 1e3 * timed(lambda: acc.problem(), device, args.repeats),
           "gram_rows_ms": 1e3 * timed(lambda: acc.problem(directions=k), device, args.repeats)}
    problem = acc.problem(directions=k)
    basis = problem.basis.reshape(-1)

    def rows_to_host() -> torch.Tensor:
        if device != "cuda":
            return basis
        host = torch.empty(basis.shape, dtype=basis.dtype, pin_memory=True)
        return host.copy_(basis, non_blocking=True)

    out["to_host_ms"] = 1e3 * timed(rows_to_host, device, args.repeats)
    out["basis_mib"] = basis.numel() * 4 / 2**20
    host = problem.layout().from_flat(problem.flat().cpu(), basis.cpu())
    out["eigvalsh_ms"] = 1e3 * timed(lambda: torch.linalg.eigvalsh(host.matrix), "cpu", args.repeats)
    out["eigh_ms"] = 1e3 * timed(lambda: torch.linalg.eigh(host.matrix), "cpu", args.repeats)
    out["solve_ms"] = 1e3 * timed(host.solve_with_directions, "cpu", args.repeats)
    values, directions = host.solve_with_directions()
    values_np, directions_np = values.numpy()[:k], directions.numpy()
    matcher = ModeMatcher()
    matcher.update(values_np, directions_np)
    rotation = np.linalg.qr(np.eye(k) + 0.01 * np.random.default_rng(0).standard_normal((k, k)))[0]
    out["match_ms"] = 1e3 * timed(lambda: matcher.update(values_np, directions_np @ rotation), "cpu", args.repeats)
    out["kept_mib"] = matcher.state_dict()["anchors"].nbytes / 2**20 + k * d * 4 / 2**20  # + k onset directions
    return out


def detection_ms(k: int, rows: int, repeats: int) -> float:
    """Onset detection per identity after one new row, on a history of ``rows`` rows of ``k`` identities."""
    run = mode_family_run("all", k, rows=rows, seed=0)
    ids, values, _, _ = follow_modes(run.eigenvalues, run.directions)
    tracker = OnsetTracker()
    for end in range(3, rows):  # as during training: one update per measurement
        tracker.update(run.steps[:end], values[:end], mode_ids=ids[:end])

    def one_more_row() -> None:
        copy.deepcopy(tracker).update(run.steps, values, mode_ids=ids)

    return 1e3 * timed(one_more_row, "cpu", repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dims", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--k", type=int, default=64, help="directions per measurement (mode_directions)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from overhead import cpu_name  # the benchmarks' folder is on sys.path when run as a script

    device = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    print(f"machine: {device}; host {cpu_name()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    print(f"window {args.window} float32 rows, k = {args.k} directions; median of {args.repeats}")
    print()
    print("| d | Gram (ms) | Gram + rows (ms) | rows to host (ms) | rows copied (MiB) | eigvalsh N x N (ms) "
          "| eigh N x N (ms) | eigh + directions (ms) | matching (ms) | kept between windows (MiB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for d in args.dims:
        r = measure(d, args)
        print(f"| {d} | {r['gram_ms']:.1f} | {r['gram_rows_ms']:.1f} | {r['to_host_ms']:.2f} | {r['basis_mib']:.0f} "
              f"| {r['eigvalsh_ms']:.0f} | {r['eigh_ms']:.0f} | {r['solve_ms']:.0f} | {r['match_ms']:.2f} "
              f"| {r['kept_mib']:.1f} |")
    print()
    print("| history rows | identities | onset detection after one more row (ms) |")
    print("| --- | --- | --- |")
    for rows in (300, 1000):
        print(f"| {rows} | {args.k} | {detection_ms(args.k, rows, args.repeats):.1f} |")


if __name__ == "__main__":
    main()
