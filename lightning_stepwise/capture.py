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

import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_stepwise.problems import StepwiseWarning

__all__ = [
    "NoEmbeddingFoundError",
    "TrackingPoint",
    "find_tracking_points",
    "flatten_tensors",
    "is_lightly_loss",
    "loss_normalizes_inputs",
    "online_tensors",
    "to_embedding_rows",
]

Source = Literal["loss_inputs", "module_inputs", "module_output", "embedding_fn"]

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
    """Raised at fit start when the monitor cannot tell where the embeddings are.

    Examples:
        >>> try:
        ...     find_tracking_points(torch.nn.Sequential(torch.nn.Linear(2, 2)))
        ... except NoEmbeddingFoundError as err:
        ...     print(str(err).splitlines()[-2].strip())
        StepwiseMonitor(module="<dotted.path>")          # dotted path of a submodule (or a list of them)
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


def _how_to_point(example: str) -> str:
    return (
        "Point the monitor at the embeddings in one of two ways:\n"
        f'  StepwiseMonitor(module="{example}")          # dotted path of a submodule (or a list of them)\n'
        "  StepwiseMonitor(embedding_fn=lambda pl_module, batch: pl_module(batch[0][0]))"
    )


def _resolve_path(pl_module: nn.Module, path: str) -> TrackingPoint:
    try:
        module = pl_module.get_submodule(path)
    except AttributeError:
        raise NoEmbeddingFoundError(
            f"StepwiseMonitor: `{type(pl_module).__name__}` has no submodule `{path}`. "
            f"Submodules found:\n{_candidate_listing(pl_module)}\n{_how_to_point('projection_head')}"
        ) from None
    source: Source = "loss_inputs" if is_lightly_loss(module) else "module_output"
    return TrackingPoint(path, source, module)


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
    pl_module: nn.Module, module: str | Sequence[str] | None = None
) -> list[TrackingPoint]:
    """Resolve where to capture embeddings: the given dotted path(s), or auto-detection.

    Raises [`NoEmbeddingFoundError`][lightning_stepwise.capture.NoEmbeddingFoundError], listing the submodules it found
    and the two ways to point
    the monitor, when nothing usable exists.

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
        paths = [module] if isinstance(module, str) else list(module)
        if not paths:
            raise ValueError("module must be a dotted path or a non-empty list of them")
        return [_resolve_path(pl_module, path) for path in paths]

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
    raise NoEmbeddingFoundError(
        f"StepwiseMonitor could not find the embeddings of `{type(pl_module).__name__}`: it has no "
        "loss module from `lightly.loss`, no `projection_head` and no `backbone`. "
        f"Submodules found:\n{_candidate_listing(pl_module)}\n{_how_to_point('<dotted.path>')}"
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
