"""Finding and hooking the embeddings of a LightningModule without changing its code.

Auto-detection order (the first that exists wins):

1. with a loss from ``lightly.loss`` and a Lightly prototype layer (``SwaVPrototypes``, the
   ``last_layer`` of a DINO-style projection head, ``CAPIProjectionHead``: layers whose outputs are scores
   against prototypes): the inputs of the trainable prototype layer (the embeddings the loss compares
   with the prototypes, not the scores; the student's, not the teacher's or a momentum copy's). Only the
   layer's calls whose output reaches the loss are kept (traced through views, ``torch.cat`` and
   ``chunk``), so patch tokens that the same head scores for another loss (iBOT, DINOv2) are left out;
2. the inputs of a loss module from ``lightly.loss`` (the embeddings exactly as the loss sees them);
3. the output of a submodule named ``projection_head``;
4. the output of a submodule named ``backbone`` (flattened).

Of the inputs of a loss (or prototype layer) only the *online* ones are measured: the tensors gradient
flows back through. A momentum or teacher branch, a stop-gradient copy (``z.detach()``), a memory-bank
sample or a parameter passed to the loss (a prototype matrix) is left out, so the covariance is that of
one network's embeddings, not a mixture of two branches. A call made under ``torch.no_grad`` (a queue or
momentum pass) is left out when the same training step also brought online tensors. Inputs of more than
two dimensions are rows along their last dimension (``(batch, views, dim)`` gives ``batch * views`` rows
of ``dim``); inputs of another number of dimensions than the first are left out. ``EmbeddingTap.left_out``
counts what was left out, and why.

Hooks only copy detached tensors while a measurement window is open; they never change inputs or
outputs, so no gradient flows through the capture and training is unchanged.
"""

from __future__ import annotations

import difflib
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_stepwise.problems import StepwiseWarning

__all__ = [
    "NO_BATCH",
    "ModuleSpec",
    "NoEmbeddingFoundError",
    "TrackingPoint",
    "batch_size_of",
    "find_tracking_points",
    "flatten_tensors",
    "is_lightly_loss",
    "loss_normalizes_inputs",
    "online_tensors",
    "to_embedding_rows",
    "two_view_problem",
]

Source = Literal["loss_inputs", "module_inputs", "module_output", "embedding_fn"]
ModuleSpec = str | nn.Module
"""What ``StepwiseMonitor(module=...)`` names: a dotted submodule path, or the submodule itself."""


class _NoBatch:
    def __repr__(self) -> str:
        return "NO_BATCH"


NO_BATCH: Any = _NoBatch()
"""Stands for "no training batch seen yet" (``None`` could be a batch)."""

# Lightly losses that L2-normalise their inputs before comparing them (checked along the MRO, so
# subclasses such as DirectCLRLoss(NTXentLoss) count too).
_NORMALIZING_LOSSES = frozenset(
    {
        "NTXentLoss",
        "DCLLoss",
        "DCLWLoss",
        "HypersphereLoss",
        "NegativeCosineSimilarity",
        "TiCoLoss",
        "MACLLoss",
        "MSNLoss",
    }
)
_AUTO_MODULE_NAMES = ("projection_head", "backbone")


class NoEmbeddingFoundError(ValueError):
    """Raised before training when the monitor cannot tell where the embeddings are.

    A ``module=`` path that names no submodule raises at fit start, with the close matches; when
    auto-detection finds nothing, the error comes at the first training batch, so that its
    ``embedding_fn`` suggestion fits the batches the model is given.

    Examples:
        >>> net = torch.nn.Module()
        >>> net.backbone = torch.nn.Linear(2, 2)
        >>> try:
        ...     find_tracking_points(net, module="backbon")
        ... except NoEmbeddingFoundError as err:
        ...     print(str(err).splitlines()[0])
        StepwiseMonitor(module="backbon"): `Module` has no submodule `backbon`. Did you mean `backbone`?
    """


def is_lightly_loss(module: nn.Module) -> bool:
    """Whether ``module`` is a loss from ``lightly.loss``.

    Examples:
        >>> from lightly.loss import BarlowTwinsLoss
        >>> is_lightly_loss(BarlowTwinsLoss()), is_lightly_loss(torch.nn.MSELoss())
        (True, False)
    """
    return type(module).__module__.startswith("lightly.loss")


def loss_normalizes_inputs(module: nn.Module) -> bool:
    """Whether ``module`` is a Lightly loss that L2-normalises its inputs (NT-Xent, DCL, ...).

    Examples:
        >>> from lightly.loss import BarlowTwinsLoss, NTXentLoss
        >>> loss_normalizes_inputs(NTXentLoss()), loss_normalizes_inputs(BarlowTwinsLoss())
        (True, False)
    """
    return is_lightly_loss(module) and any(c.__name__ in _NORMALIZING_LOSSES for c in type(module).__mro__)


@dataclass(frozen=True)
class TrackingPoint:
    """One place where embeddings are captured.

    ``name`` is the dotted module path (``"criterion"``, ``"model.projection_head"``) or
    ``"embedding_fn"``. ``source`` says what is captured there: the online inputs of a loss
    (``"loss_inputs"``) or of another module (``"module_inputs"``, a prototype layer), a module's output
    (``"module_output"``), or what ``embedding_fn`` returns.

    Examples:
        >>> point = TrackingPoint("projection_head", "module_output", torch.nn.Identity())
        >>> point.describe()
        'the output of `projection_head` (Identity)'
    """

    name: str
    source: Source
    module: nn.Module | None = None
    #: For a prototype layer: the loss its scores feed; only calls whose output reaches this loss are kept.
    loss: nn.Module | None = None

    @property
    def loss_normalizes(self) -> bool:
        """Whether the hooked module is a loss that L2-normalises what it receives."""
        return self.source == "loss_inputs" and self.module is not None and loss_normalizes_inputs(self.module)

    def describe(self) -> str:
        """A human-readable description for log messages."""
        if self.source == "embedding_fn":
            return "the tensor returned by `embedding_fn`"
        kind = type(self.module).__name__
        if self.source in ("loss_inputs", "module_inputs"):
            return f"the online inputs of `{self.name}` ({kind})"
        return f"the output of `{self.name}` ({kind})"


def _candidate_listing(pl_module: nn.Module, max_depth: int = 2, limit: int = 40) -> str:
    lines = []
    for name, module in pl_module.named_modules():
        if not name or name.count(".") >= max_depth:
            continue
        lines.append(f"  {name}: {type(module).__name__}")
        if len(lines) >= limit:
            lines.append("  ...")
            break
    return "\n".join(lines) if lines else "  (the module has no submodules)"


def _close_matches(path: str, names: Sequence[str], n: int = 5) -> list[str]:
    """Module names close to ``path``, for "Did you mean ...?".

    Close as a whole or by their last part (at the path's depth first), else names whose last part has the
    path's last part as a word (``head`` -> ``projection_head``).

    Examples:
        >>> names = ["backbone", "backbone.0", "model.projection_head", "criterion"]
        >>> _close_matches("backbon", names), _close_matches("projection_head", names), _close_matches("head", names)
        (['backbone'], ['model.projection_head'], ['model.projection_head'])
    """
    by_lower: dict[str, str] = {}
    for name in names:
        by_lower.setdefault(name.lower(), name)
    wanted, leaf = path.lower(), path.rpartition(".")[2].lower()
    found = difflib.get_close_matches(wanted, list(by_lower), n=n, cutoff=0.6)
    leaves: dict[str, list[str]] = {}
    for lower in by_lower:
        leaves.setdefault(lower.rpartition(".")[2], []).append(lower)
    for close_leaf in difflib.get_close_matches(leaf, list(leaves), n=n, cutoff=0.75):
        found.extend(leaves[close_leaf])
    same_depth = [lower for lower in found if lower.count(".") == wanted.count(".")]
    found = same_depth or found
    if not found:
        found = [lower for lower in by_lower if leaf in lower.rpartition(".")[2].split("_")]
    unique = list(dict.fromkeys(found))
    return [by_lower[lower] for lower in unique[:n]]


def _auto_detection_summary(pl_module: nn.Module) -> str:
    """What auto-detection (no ``module=``) would measure in ``pl_module``, and the candidates it considers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            chosen = find_tracking_points(pl_module)[0].describe()
        except NoEmbeddingFoundError:
            chosen = None
    candidates = []
    for name, m in pl_module.named_modules():
        leaf = name.rpartition(".")[2]
        if not name:
            continue
        if is_lightly_loss(m) and not is_lightly_loss(pl_module.get_submodule(name.rpartition(".")[0])):
            candidates.append(f"  {name}: {type(m).__name__} (a lightly.loss loss: its online inputs)")
        elif _is_lightly(m) and (type(m).__name__.endswith("Prototypes") or type(m).__name__ in _PROTOTYPE_HEADS):
            candidates.append(f"  {name}: {type(m).__name__} (a prototype layer: its inputs)")
        elif leaf in _AUTO_MODULE_NAMES:
            candidates.append(f"  {name}: {type(m).__name__} (its output)")
    considered = ("Auto-detection considers Lightly prototype layers and losses (their online inputs), then "
                  "submodules named `projection_head` or `backbone` (their output)")
    found = ":\n" + "\n".join(candidates[:20]) if candidates else "; it finds none here."
    verdict = (f"Without module=, it would measure {chosen}." if chosen is not None
               else "Without module=, it finds nothing to measure.")
    return f"{verdict} {considered}{found}"


def _point_at(name: str, module: nn.Module) -> TrackingPoint:
    source: Source = "loss_inputs" if is_lightly_loss(module) else "module_output"
    return TrackingPoint(name, source, module)


def _resolve_path(pl_module: nn.Module, path: str) -> TrackingPoint:
    try:
        module = pl_module.get_submodule(path)
    except AttributeError:
        pass
    else:
        if path:
            return _point_at(path, module)
    model = type(pl_module).__name__
    names = [name for name, _ in pl_module.named_modules() if name]
    close = _close_matches(path, names)
    mean = f" Did you mean {' or '.join(f'`{c}`' for c in close)}?" if close else ""
    from lightning_stepwise.embedding_suggestion import how_to_point  # imports this module: here, not at the top

    raise NoEmbeddingFoundError(
        f'StepwiseMonitor(module="{path}"): `{model}` has no submodule `{path}`.{mean}\n'
        f"{_auto_detection_summary(pl_module)}\nSubmodules found:\n{_candidate_listing(pl_module)}\n"
        f"{how_to_point(pl_module)}")


def _resolve_module(pl_module: nn.Module, module: nn.Module) -> TrackingPoint:
    name = next((n for n, m in pl_module.named_modules() if m is module), None)
    if name:
        return _point_at(name, module)
    model, kind = type(pl_module).__name__, type(module).__name__
    if name == "":
        problem = (f"StepwiseMonitor(module=...) was given the `{model}` being fitted itself; pass one of its "
                   "submodules (or nothing: auto-detection)")
    else:
        same_type = [n for n, m in pl_module.named_modules() if n and type(m) is type(module)]
        mean = f" Did you mean {' or '.join(f'`{n}`' for n in same_type[:5])}?" if same_type else ""
        problem = (f"StepwiseMonitor(module=...) was given a {kind} that is not a submodule of the `{model}` being "
                   "fitted (a module of another model instance, or a copy); pass the submodule of the model given "
                   f"to trainer.fit, or its dotted path.{mean}")
    raise NoEmbeddingFoundError(
        f"{problem}\n{_auto_detection_summary(pl_module)}\nSubmodules found:\n{_candidate_listing(pl_module)}")


# Lightly heads that are themselves a prototype layer: their weights are the prototypes, their outputs scores.
_PROTOTYPE_HEADS = frozenset({"CAPIProjectionHead"})
_OTHER_BRANCH_WORDS = ("teacher", "momentum", "target", "ema")


def _is_lightly(module: nn.Module) -> bool:
    return type(module).__module__.startswith("lightly.")


def _prototype_layer(pl_module: nn.Module) -> tuple[str, nn.Module] | None:
    """The shallowest trainable Lightly prototype layer: ``*Prototypes``, or a DINO-style head's ``last_layer``."""
    found = []
    for name, m in pl_module.named_modules():
        parent, _, leaf = name.rpartition(".")
        if not name:
            continue
        if _is_lightly(m) and (type(m).__name__.endswith("Prototypes") or type(m).__name__ in _PROTOTYPE_HEADS):
            found.append((name, m))
        elif leaf == "last_layer" and parent:
            head = pl_module.get_submodule(parent)
            if _is_lightly(head) and type(head).__name__.endswith("ProjectionHead"):
                found.append((name, m))
    # the student's layer, not the teacher's copy (whose parameters do not require grad, or are named so)
    trainable = [(n, m) for n, m in found if any(p.requires_grad for p in m.parameters())]
    candidates = trainable or found
    online = [(n, m) for n, m in candidates if not any(word in n for word in _OTHER_BRANCH_WORDS)]
    candidates = online or candidates
    return min(candidates, key=lambda nm: nm[0].count(".")) if candidates else None


def _first_named(pl_module: nn.Module, predicate: Callable[[str, nn.Module], bool]) -> tuple[str, nn.Module] | None:
    # Shallowest match first, so `projection_head` beats `model.projection_head`.
    matches = [(name, m) for name, m in pl_module.named_modules() if name and predicate(name, m)]
    return min(matches, key=lambda nm: nm[0].count(".")) if matches else None


def find_tracking_points(
    pl_module: nn.Module, module: ModuleSpec | Sequence[ModuleSpec] | None = None, *, batch: Any = NO_BATCH,
    two_views: bool = False,
) -> list[TrackingPoint]:
    """Resolve where to capture embeddings: the given submodule(s) (dotted paths or modules), or auto-detection.

    Raises [`NoEmbeddingFoundError`][lightning_stepwise.capture.NoEmbeddingFoundError] when nothing usable
    exists: for a path that names no submodule, the close matches among the module's names and what
    auto-detection would measure; when auto-detection finds nothing, the submodules found and the two ways
    to point the monitor, with an ``embedding_fn`` fitted to ``batch`` (a training batch, when one was
    seen) and to two stacked views when ``two_views``.

    Examples:
        >>> from lightly.loss import BarlowTwinsLoss
        >>> net = torch.nn.Module()
        >>> net.projection_head = torch.nn.Linear(4, 2)
        >>> net.criterion = BarlowTwinsLoss()
        >>> [p.describe() for p in find_tracking_points(net)]
        ['the online inputs of `criterion` (BarlowTwinsLoss)']
        >>> [p.name for p in find_tracking_points(net, module=["projection_head", "criterion"])]
        ['projection_head', 'criterion']
    """
    if module is not None:
        specs = [module] if isinstance(module, (str, nn.Module)) else list(module)
        if not specs:
            raise ValueError("module must be a dotted path or a non-empty list of them")
        return [_resolve_path(pl_module, spec) if isinstance(spec, str) else _resolve_module(pl_module, spec)
                for spec in specs]

    # Nested losses (e.g. Whitening2d inside WMSELoss) are parts of the outer loss, not the loss.
    def is_outer_loss(name: str, m: nn.Module) -> bool:
        if not is_lightly_loss(m):
            return False
        parent = name.rpartition(".")[0]
        return not (parent and is_lightly_loss(pl_module.get_submodule(parent)))

    losses = [(name, m) for name, m in pl_module.named_modules() if name and is_outer_loss(name, m)]
    found = _first_named(pl_module, is_outer_loss)
    if found is not None:
        prototypes = _prototype_layer(pl_module)
        if prototypes is not None:  # the loss compares prototype scores: measure what is scored
            point = TrackingPoint(prototypes[0], "module_inputs", prototypes[1], loss=found[1])
        else:
            point = TrackingPoint(found[0], "loss_inputs", found[1])
        if len(losses) > 1:
            shared = f" (only its calls whose output reaches `{found[0]}`)" if prototypes is not None else ""
            warnings.warn(
                f"StepwiseMonitor found {len(losses)} Lightly losses ({', '.join(f'`{n}`' for n, _ in losses)}) and "
                f"measures {point.describe()}{shared}; pass StepwiseMonitor(module=\"<name>\") to choose, or a "
                "list of names to measure several", StepwiseWarning, stacklevel=2)
        return [point]
    for wanted in _AUTO_MODULE_NAMES:
        found = _first_named(pl_module, lambda name, _m, wanted=wanted: name.rpartition(".")[2] == wanted)
        if found is not None:
            return [TrackingPoint(found[0], "module_output", found[1])]
    from lightning_stepwise.embedding_suggestion import how_to_point  # imports this module: here, not at the top

    raise NoEmbeddingFoundError(
        f"StepwiseMonitor could not find the embeddings of `{type(pl_module).__name__}`: it has no "
        "loss module from `lightly.loss`, no `projection_head` and no `backbone`. "
        f"Submodules found:\n{_candidate_listing(pl_module)}\n"
        f"{how_to_point(pl_module, batch, two_views=two_views)}"
    )


def flatten_tensors(obj: Any) -> list[Tensor]:
    """All tensors in a nested structure of tuples, lists and mappings, in order.

    Examples:
        >>> len(flatten_tensors((torch.zeros(1), [torch.ones(2), 3], {"a": torch.ones(1)})))
        3
    """
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in flatten_tensors(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in flatten_tensors(v)]
    return []


def online_tensors(tensors: Iterable[Tensor], left_out: Counter[str] | None = None) -> list[Tensor]:
    """The candidate embeddings among ``tensors`` that gradient flows back through (the online branch).

    Candidates are floating tensors of 2 or more dimensions. Left out, and counted in ``left_out`` by
    reason: ``"no_gradient"`` (a momentum or teacher branch, a stop-gradient copy, a memory-bank sample),
    ``"parameter"`` (a leaf that requires grad, e.g. a prototype matrix passed to the loss). With
    gradients disabled (``torch.no_grad``) nothing can be told apart and every non-parameter candidate is kept.

    Examples:
        >>> w = torch.nn.Parameter(torch.ones(2, 3))
        >>> online, target = torch.ones(4, 2) @ w, torch.ones(4, 3)
        >>> left_out = Counter()
        >>> [tuple(t.shape) for t in online_tensors([online, target, w], left_out)], dict(left_out)
        ([(4, 3)], {'no_gradient': 1, 'parameter': 1})
    """
    kept = []
    grad_enabled = torch.is_grad_enabled()
    for t in tensors:
        if not torch.is_floating_point(t) or t.ndim < 2:
            continue
        reason = None
        if t.requires_grad and t.grad_fn is None:
            reason = "parameter"
        elif grad_enabled and not t.requires_grad:
            reason = "no_gradient"
        if reason is None:
            kept.append(t)
        elif left_out is not None:
            left_out[reason] += 1
    return kept


def to_embedding_rows(tensors: Iterable[Tensor]) -> tuple[Tensor | None, list[tuple[str, str]]]:
    """Stack captured tensors into one ``N x d`` matrix of embedding rows.

    Floating tensors of 2 or more dimensions count; ``N x C x H x W`` (or 3-D) outputs are flattened
    to ``N x (C*H*W)``; tensors whose width differs from the first one's are dropped. Returns the rows
    (or ``None``) and a list of ``(problem_key, message)`` for the caller to warn about once.

    Examples:
        >>> rows, problems = to_embedding_rows([torch.ones(4, 8), torch.ones(4, 8)])
        >>> tuple(rows.shape), problems
        ((8, 8), [])
        >>> rows, problems = to_embedding_rows([torch.ones(2, 3, 4, 4)])
        >>> tuple(rows.shape), [key for key, _ in problems]
        ((2, 48), ['flattened'])
    """
    problems: list[tuple[str, str]] = []
    kept: list[Tensor] = []
    width: int | None = None
    for t in tensors:
        if not torch.is_floating_point(t) or t.ndim < 2:
            continue
        if t.ndim > 2:
            if any(s != 1 for s in t.shape[2:]):
                problems.append((
                    "flattened",
                    f"embeddings of shape {tuple(t.shape)} are flattened to "
                    f"{(t.shape[0], t[0].numel())}; if these are not embeddings (patch or pixel predictions), point "
                    "the monitor at them with StepwiseMonitor(module=\"<dotted.path>\") or embedding_fn=..., "
                    "or at a pooled output",
                ))
            t = t.flatten(1)
        if width is None:
            width = t.shape[1]
        elif t.shape[1] != width:
            problems.append((
                "width_mismatch",
                f"dropped a captured tensor of width {t.shape[1]}: the first one had width {width}",
            ))
            continue
        kept.append(t)
    if not kept:
        problems.append((
            "no_rows",
            "no floating tensor of shape (batch, dim) was captured in a training step",
        ))
        return None, problems
    return (kept[0] if len(kept) == 1 else torch.cat(kept)), problems


# ------------------------------------------------------------------ two stacked views

def batch_size_of(batch: Any) -> int | None:
    """Samples in a training batch: the most common leading size of its tensors (None without tensors).

    Examples:
        >>> batch_size_of(((torch.zeros(16, 3), torch.zeros(16, 3)), torch.zeros(16)))
        16
        >>> batch_size_of({"image": torch.zeros(8, 3), "label": torch.zeros(8), "name": "a"}), batch_size_of("a")
        (8, None)
    """
    sizes = Counter(int(t.shape[0]) for t in flatten_tensors(batch) if t.ndim >= 1)
    return sizes.most_common(1)[0][0] if sizes else None


def two_view_problem(row_counts: Sequence[int], batch_size: int | None = None) -> str | None:
    """Why a step's captured rows cannot be two stacked views ``[Z0; Z1]``, or None when they can be.

    ``row_counts`` are the rows of each tensor captured in the step, in order (one per forward pass of a
    module, or per online input of a loss); ``batch_size`` the samples of the training batch, when known.
    The rows can be two views when their number is even and the middle falls between two tensors (the
    two halves are the same number of samples), or when one tensor holds them all and it is not one row
    per sample of the batch (a forward pass of the two views concatenated has ``2 * batch_size`` rows).

    Examples:
        >>> two_view_problem([16, 16]), two_view_problem([32], batch_size=16), two_view_problem([32])
        (None, None, None)
        >>> two_view_problem([16], batch_size=16)
        'one forward pass of 16 rows for a batch of 16 samples: one view per sample'
        >>> two_view_problem([16, 12])
        'the two halves differ: forward passes of 16 and 12 rows'
        >>> two_view_problem([15])
        '15 rows, an odd number'
    """
    total = sum(row_counts)
    if total % 2:
        return f"{total} rows, an odd number"
    if len(row_counts) <= 1:
        if batch_size is not None and total == batch_size:
            return f"one forward pass of {total} rows for a batch of {batch_size} samples: one view per sample"
        return None
    running = 0
    for n in row_counts:
        running += n
        if running == total // 2:
            return None
        if running > total // 2:
            break
    sizes = ", ".join(str(n) for n in row_counts[:-1]) + f" and {row_counts[-1]}"
    return f"the two halves differ: forward passes of {sizes} rows"
