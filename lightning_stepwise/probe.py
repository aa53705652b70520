"""Linear-probe evaluation: frozen features, a deterministic linear classifier, accuracy per mode count.

The classifier is multinomial logistic regression fitted full-batch with L-BFGS on standardised features
(train mean and standard deviation), with scikit-learn's regularisation convention:

    minimise  Σ_i cross_entropy(W x_i + b, y_i) + ‖W‖² / (2 C)        (the bias is not penalised)

``C = 1`` by default, like ``sklearn.linear_model.LogisticRegression``. ``method="ridge"`` is the closed-form
alternative: least squares on one-hot targets with ``‖W‖² / C`` added, fast and exact. Both run on the
features' device in float64 and give the same answer on every run.

*Accuracy per number of modes* projects the (centred) features on the top-``k`` eigenvectors of their
train covariance, for ``k = 1, 2, 4, ...`` up to the width, and fits the probe on each projection: how
much label information the leading modes carry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics.functional.classification import multiclass_accuracy

__all__ = [
    "ProbeResult",
    "extract_features",
    "format_modes",
    "format_probe_table",
    "fit_linear_probe",
    "linear_probe",
    "mode_counts",
    "point_features",
    "split_labelled_batch",
]


@dataclass
class ProbeResult(Mapping[str, Any]):
    """Probe accuracies; a read-only mapping with at least ``top1`` and ``modes``.

    Attributes:
        top1: validation top-1 accuracy (0–1) with all features.
        topk: ``{k: accuracy}`` for the other requested ``k`` (e.g. ``{5: 0.99}``).
        modes: ``[(k, top1)]``: accuracy using only the top-``k`` covariance eigen-directions.
        train_top1: top-1 on the training features (a check for under/over-fitting).
        classes: number of classes; ``train_size``, ``val_size``, ``width``: the data's shape.

    Examples:
        >>> r = ProbeResult(top1=0.9, topk={5: 1.0}, modes=[(1, 0.3)], train_top1=0.95, classes=10,
        ...                 train_size=100, val_size=50, width=8)
        >>> r["top1"], r["top5"], r["modes"]
        (0.9, 1.0, [(1, 0.3)])
    """

    top1: float
    topk: dict[int, float]
    modes: list[tuple[int, float]]
    train_top1: float
    classes: int
    train_size: int
    val_size: int
    width: int
    extra: dict[str, Any] = field(default_factory=dict)

    def _flat(self) -> dict[str, Any]:
        flat: dict[str, Any] = {"top1": self.top1, "modes": self.modes, "train_top1": self.train_top1,
                                "classes": self.classes, "train_size": self.train_size,
                                "val_size": self.val_size, "width": self.width}
        flat.update({f"top{k}": v for k, v in self.topk.items()})
        flat.update(self.extra)
        return flat

    def __getitem__(self, key: str) -> Any:
        return self._flat()[key]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._flat())

    def __len__(self) -> int:
        return len(self._flat())


def mode_counts(width: int, extra: Iterable[int] = ()) -> list[int]:
    """``1, 2, 4, ...`` up to ``width``, ``width`` itself, and any ``extra`` counts within range, sorted.

    Examples:
        >>> mode_counts(12, extra=[5])
        [1, 2, 4, 5, 8, 12]
    """
    counts = {width}
    k = 1
    while k < width:
        counts.add(k)
        k *= 2
    counts.update(int(e) for e in extra if 1 <= int(e) <= width)
    return sorted(counts)


def _check_labelled(features: Tensor, labels: Tensor, what: str) -> tuple[Tensor, Tensor]:
    if not isinstance(features, Tensor) or not isinstance(labels, Tensor):
        raise TypeError(f"{what} features and labels must be tensors")
    if features.ndim != 2:
        raise ValueError(f"{what} features must be N × width, got shape {tuple(features.shape)}")
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(f"{what} labels must be one per feature row ({features.shape[0]}), got shape "
                         f"{tuple(labels.shape)}")
    if features.shape[0] == 0:
        raise ValueError(f"the {what} set is empty: the probe needs labelled samples")
    if torch.is_floating_point(labels) or labels.dtype == torch.bool:
        raise ValueError(f"{what} labels must be integer class indices, got {labels.dtype}")
    if not bool(torch.isfinite(features).all()):
        raise ValueError(f"{what} features contain NaN or infinite values")
    return features.to(torch.float64), labels.to(torch.long)


def _standardise(train: Tensor, val: Tensor) -> tuple[Tensor, Tensor]:
    mean = train.mean(0)
    std = train.std(0, unbiased=False)
    std = torch.where(std > 1e-12 * std.max().clamp_min(1e-300), std, torch.ones_like(std))  # constant columns
    return (train - mean) / std, (val - mean) / std


def _fit_logistic(x: Tensor, y: Tensor, classes: int, c: float, max_iter: int) -> tuple[Tensor, Tensor]:
    n, width = x.shape
    weight = torch.zeros(width, classes, dtype=x.dtype, device=x.device, requires_grad=True)
    bias = torch.zeros(classes, dtype=x.dtype, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        # sklearn's objective divided by n C: mean cross-entropy + ‖W‖² / (2 C n)
        loss = nn.functional.cross_entropy(x @ weight + bias, y) + (weight**2).sum() / (2 * c * n)
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def _fit_ridge(x: Tensor, y: Tensor, classes: int, c: float) -> tuple[Tensor, Tensor]:
    targets = nn.functional.one_hot(y, classes).to(x.dtype)
    mean_x, mean_t = x.mean(0), targets.mean(0)
    xc = x - mean_x
    gram = xc.T @ xc + torch.eye(x.shape[1], dtype=x.dtype, device=x.device) / c
    weight = torch.linalg.solve(gram, xc.T @ (targets - mean_t))
    return weight, mean_t - mean_x @ weight


def fit_linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    val_features: Tensor,
    val_labels: Tensor,
    *,
    method: str = "logistic",
    c: float = 1.0,
    top_k: Sequence[int] = (1, 5),
    modes: bool | Iterable[int] = True,
    max_iter: int = 500,
) -> ProbeResult:
    """Fit a linear classifier on frozen features and report validation accuracy (torchmetrics).

    Args:
        train_features: ``N × width`` training features.
        train_labels: ``N`` integer class labels.
        val_features: ``M × width`` validation features.
        val_labels: ``M`` integer class labels.
        method: ``"logistic"`` (L-BFGS, sklearn's objective, default) or ``"ridge"`` (closed form).
        c: inverse regularisation strength (sklearn's ``C``).
        top_k: accuracies to report (``top1`` always); values above the class count are skipped.
        modes: also fit on the top-``k`` covariance eigen-directions for ``k`` in
            [`mode_counts`][lightning_stepwise.probe.mode_counts]
            (``True``), for the given extra counts too (an iterable), or not (``False``).
        max_iter: L-BFGS iterations.

    Returns:
        A [`ProbeResult`][lightning_stepwise.probe.ProbeResult] (``result["top1"]``, ``result["top5"]``,
        ``result["modes"]``).

    Raises:
        ValueError: empty sets, a single class, mismatched widths or lengths, non-integer labels,
            NaN features, validation labels the training set has never seen.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(200) % 4
        >>> x = torch.nn.functional.one_hot(y, 4).double() * 3 + torch.randn(200, 4, generator=g, dtype=torch.float64)
        >>> r = fit_linear_probe(x[:150], y[:150], x[150:], y[150:], modes=False)
        >>> r["top1"] > 0.9
        True
    """
    if method not in {"logistic", "ridge"}:
        raise ValueError(f"method must be 'logistic' or 'ridge', got {method!r}")
    if not c > 0:
        raise ValueError(f"c (inverse regularisation) must be > 0, got {c}")
    x_train, y_train = _check_labelled(train_features, train_labels, "train")
    x_val, y_val = _check_labelled(val_features, val_labels, "validation")
    x_val, y_val = x_val.to(x_train.device), y_val.to(x_train.device)
    if x_train.shape[1] != x_val.shape[1]:
        raise ValueError(f"train features have width {x_train.shape[1]} but validation features {x_val.shape[1]}: "
                         "extract both from the same point of the model")
    seen = torch.unique(y_train)
    if len(seen) < 2:
        raise ValueError(f"the training labels hold a single class ({int(seen[0])}): a probe needs at least two")
    if int(y_train.min()) < 0:
        raise ValueError("labels must be class indices >= 0")
    unseen = set(torch.unique(y_val).tolist()) - set(seen.tolist())
    if unseen:
        raise ValueError(f"validation labels {sorted(unseen)[:10]} never occur in the training set")
    classes = int(max(int(y_train.max()), int(y_val.max()))) + 1

    def accuracy(x_tr: Tensor, x_va: Tensor) -> tuple[Tensor, Tensor]:
        x_tr, x_va = _standardise(x_tr, x_va)
        if method == "logistic":
            weight, bias = _fit_logistic(x_tr, y_train, classes, c, max_iter)
        else:
            weight, bias = _fit_ridge(x_tr, y_train, classes, c)
        return x_tr @ weight + bias, x_va @ weight + bias

    train_logits, val_logits = accuracy(x_train, x_val)

    def top(logits: Tensor, labels: Tensor, k: int) -> float:
        return float(multiclass_accuracy(logits, labels, num_classes=classes, top_k=k, average="micro"))

    result = ProbeResult(
        top1=top(val_logits, y_val, 1),
        topk={k: top(val_logits, y_val, k) for k in sorted(set(top_k)) if 1 < k <= classes},
        modes=[],
        train_top1=top(train_logits, y_train, 1),
        classes=classes, train_size=x_train.shape[0], val_size=x_val.shape[0], width=x_train.shape[1],
    )
    if modes is not False:
        extra = [] if modes is True else list(modes)
        centred = x_train - x_train.mean(0)
        _, vectors = torch.linalg.eigh(centred.T @ centred / max(x_train.shape[0] - 1, 1))
        vectors = vectors.flip(1)  # descending variance
        for k in mode_counts(x_train.shape[1], extra):
            basis = vectors[:, :k]
            _, logits = accuracy(x_train @ basis, x_val @ basis)
            result.modes.append((k, top(logits, y_val, 1)))
    return result


FeatureFn = Callable[[nn.Module, Tensor], Tensor]


def point_features(path: str) -> FeatureFn:
    """A ``feature_fn`` that runs the module's ``forward`` and takes the output of submodule ``path``.

    For a point that ``forward`` passes through, e.g. ``"projection_head"`` of a Lightly module, or any
    point the monitor tracks. Raises ``ValueError`` naming the submodules when ``path`` does not exist.

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
        >>> point_features("1")(net, torch.randn(4, 3)).shape
        torch.Size([4, 5])
    """
    def features(module: nn.Module, x: Tensor) -> Tensor:
        try:
            target = module.get_submodule(path)
        except AttributeError:
            names = [name for name, _ in module.named_children()]
            raise ValueError(f"no submodule {path!r} to probe; the module has {names}") from None
        captured: list[Tensor] = []

        def keep(_module: nn.Module, _args: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, (tuple, list)) else output)

        handle = target.register_forward_hook(keep)
        try:
            module(x)
        finally:
            handle.remove()
        if not captured:
            raise ValueError(f"the module's forward does not run {path!r}: pass a feature_fn instead")
        return captured[0].flatten(1)

    return features


def _default_features(module: nn.Module, x: Tensor) -> Tensor:
    backbone = getattr(module, "backbone", None)
    out = backbone(x) if isinstance(backbone, nn.Module) else module(x)
    return out.flatten(1)


def split_labelled_batch(batch: Any) -> tuple[Tensor, Tensor]:
    """(inputs, labels) from a labelled batch: ``(x, y)``, ``((x0, x1, ...), y)`` (first view) or a dict.

    Examples:
        >>> x, y = split_labelled_batch(((torch.zeros(2, 3), torch.ones(2, 3)), torch.tensor([0, 1])))
        >>> x.sum().item(), y.tolist()
        (0.0, [0, 1])
    """
    if isinstance(batch, Mapping):
        x = batch.get("image", batch.get("input", batch.get("x")))
        y = batch.get("label", batch.get("target", batch.get("y")))
    elif isinstance(batch, (list, tuple)) and len(batch) >= 2:
        x, y = batch[0], batch[1]
    else:
        raise ValueError("the probe needs labelled batches (inputs, labels); got a batch without labels")
    if isinstance(x, (list, tuple)):  # Lightly's multi-view batches: probe the first view
        x = x[0]
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or y.ndim != 1:
        raise ValueError("the probe needs labelled batches (inputs, labels) with one integer label per sample; "
                         f"got inputs {type(x).__name__} and labels {type(y).__name__}")
    return x, y


@torch.no_grad()
def extract_features(
    module: nn.Module,
    loader: Iterable[Any],
    *,
    feature_fn: FeatureFn | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Frozen features and labels of every batch of ``loader``, in eval mode, without gradients.

    ``feature_fn(module, inputs)`` picks the features; by default the module's ``backbone`` output
    (flattened), else the module's output. BatchNorm and Dropout run in eval mode; the module's
    previous train/eval state is restored afterwards, also when extraction fails.

    Examples:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)).train()
        >>> loader = DataLoader(TensorDataset(torch.randn(10, 3), torch.arange(10) % 2), batch_size=4)
        >>> features, labels = extract_features(net, loader)
        >>> tuple(features.shape), net.training
        ((10, 2), True)
    """
    fn = feature_fn or _default_features
    was_training = {m: m.training for m in module.modules()}
    if device is None:
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
    module.eval()
    feats, labels = [], []
    try:
        for batch in loader:
            x, y = split_labelled_batch(batch)
            out = fn(module, x.to(device))
            if out.ndim != 2:
                out = out.flatten(1)
            feats.append(out.detach().to(torch.float64))
            labels.append(y.to(device))
    finally:
        for m, mode in was_training.items():
            m.training = mode
    if not feats:
        raise ValueError("the loader yielded no batches: the probe needs labelled samples")
    return torch.cat(feats), torch.cat(labels)


def linear_probe(
    model_or_checkpoint: nn.Module | str,
    train_loader: Iterable[Any],
    val_loader: Iterable[Any],
    *,
    feature_fn: FeatureFn | None = None,
    module_class: type[nn.Module] | None = None,
    **fit_options: Any,
) -> ProbeResult:
    """The probe for a model or a Lightning checkpoint: extract frozen features, fit, report.

    Args:
        model_or_checkpoint: a module, or the path of a checkpoint of ``module_class``.
        train_loader: labelled batches ``(inputs, labels)`` to fit on.
        val_loader: labelled batches to report accuracy on.
        module_class: the LightningModule class a checkpoint was saved from
            (``module_class.load_from_checkpoint(path)``).
        feature_fn: ``fn(module, inputs) -> features``; default: the ``backbone`` output.
        **fit_options: passed to [`fit_linear_probe`][lightning_stepwise.probe.fit_linear_probe].

    Examples:
        >>> result = linear_probe(model, train_loader, val_loader)   # doctest: +SKIP
        >>> result["top1"], result["modes"][:3]                       # doctest: +SKIP
    """
    if isinstance(model_or_checkpoint, nn.Module):
        module = model_or_checkpoint
    else:
        if module_class is None or not hasattr(module_class, "load_from_checkpoint"):
            raise ValueError("a checkpoint path needs module_class, the LightningModule class it was saved from")
        module = module_class.load_from_checkpoint(model_or_checkpoint, map_location="cpu")
    train = extract_features(module, train_loader, feature_fn=feature_fn)
    val = extract_features(module, val_loader, feature_fn=feature_fn)
    return fit_linear_probe(*train, *val, **fit_options)


def _percent(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f} %"


def format_modes(modes: Sequence[tuple[int, float]]) -> str:
    """One line: probe accuracy on the top-``k`` eigen-directions, for each ``k``.

    Examples:
        >>> format_modes([(1, 0.25), (2, 0.5)])
        'top-k eigen-directions:  1: 25.0 %,  2: 50.0 %'
    """
    return "top-k eigen-directions: " + ", ".join(f"{k:>2}: {_percent(a)}" for k, a in modes)


def format_probe_table(rows: Sequence[Mapping[str, Any]], modes: Sequence[tuple[int, float]] = ()) -> str:
    """The probe results for a terminal: one line per probe run, then accuracy per number of modes.

    Examples:
        >>> print(format_probe_table([{"step": 800, "modes_learned": 5, "top1": 0.91, "top5": 0.99}], [(1, 0.3)]))
          step  modes learned   top-1   top-5
           800              5  91.0 %  99.0 %
        top-k eigen-directions:  1: 30.0 %
    """
    lines = [f"{'step':>6}  {'modes learned':>13}  {'top-1':>6}  {'top-5':>6}"]
    for r in rows:
        learned = r.get("modes_learned", math.nan)
        missing = learned is None or (isinstance(learned, float) and math.isnan(learned))
        learned_text = "-" if missing else f"{int(learned)}"
        lines.append(f"{int(r['step']):>6}  {learned_text:>13}  {_percent(r.get('top1')):>6}  "
                     f"{_percent(r.get('top5', math.nan)):>6}")
    if modes:
        lines.append(format_modes(modes))
    return "\n".join(lines)
