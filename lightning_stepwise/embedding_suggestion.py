"""The ``embedding_fn`` suggestion: the Python an error shows to point the monitor at the embeddings.

Its one job: from the batch seen (where its input, or its views, are) and the module (which submodule
looks like a backbone or a projection head), write the ``embedding_fn=`` (and the ``module=`` line) that
[`NoEmbeddingFoundError`][lightning_stepwise.capture.NoEmbeddingFoundError] and the monitor's
``embedding_fn`` errors tell the user to pass.
"""

from __future__ import annotations

import keyword
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_stepwise.capture import _OTHER_BRANCH_WORDS, NO_BATCH, _first_named, is_lightly_loss

__all__ = ["describe_batch", "how_to_point", "suggest_embedding_fn"]

_BACKBONE_WORDS = ("backbone", "encoder", "feature_extractor", "features", "trunk")
_HEAD_WORDS = ("projection", "projector", "proj")
_NOT_HEAD_WORDS = ("predict", "classif", "probe", "linear", "prototype", "last_layer")
_FRAMEWORK_MODULES = ("lightning.", "pytorch_lightning.", "lightning_fabric.")


def _looks_like(pl_module: nn.Module, kind: Literal["backbone", "head"]) -> str | None:
    """The shallowest submodule with parameters named like a backbone (``encoder``, ...) or a projection head."""

    def fits(name: str, m: nn.Module) -> bool:
        leaf = name.rpartition(".")[2].lower()
        if is_lightly_loss(m) or any(word in name.lower() for word in _OTHER_BRANCH_WORDS):
            return False
        if next(m.parameters(), None) is None:
            return False
        if kind == "backbone":
            return any(word in leaf for word in _BACKBONE_WORDS)
        named_head = any(word in leaf for word in _HEAD_WORDS) or leaf == "head" or leaf.endswith("_head")
        return named_head and not any(word in leaf for word in _NOT_HEAD_WORDS)

    found = _first_named(pl_module, fits)
    return found[0] if found is not None else None


def _first_child_with_parameters(pl_module: nn.Module) -> str | None:
    """The first direct child with parameters that is not a loss (the network, in a module without named heads)."""
    for name, child in pl_module.named_children():
        if not is_lightly_loss(child) and next(child.parameters(), None) is not None:
            return name
    return None


def _defines_forward(module: nn.Module) -> bool:
    """Whether ``module(x)`` works: a ``forward`` defined by the module's class, not Lightning's or nn.Module's."""
    for cls in type(module).__mro__:
        if "forward" in vars(cls):
            return cls is not nn.Module and not cls.__module__.startswith(_FRAMEWORK_MODULES)
    return False


def _attribute(name: str) -> str:
    """Python that reaches the submodule ``name`` from ``pl_module``."""
    if all(part.isidentifier() and not keyword.iskeyword(part) for part in name.split(".")):
        return f"pl_module.{name}"
    return f'pl_module.get_submodule("{name}")'


def _embedding_expression(pl_module: nn.Module | None) -> tuple[str, str | None]:
    """Python computing the embeddings of the input ``x``, and a note on what it assumes (or None)."""
    if pl_module is None or _defines_forward(pl_module):
        return "pl_module(x).flatten(1)", None
    backbone, head = _looks_like(pl_module, "backbone"), _looks_like(pl_module, "head")
    if backbone is not None and head is not None and not head.startswith(backbone + "."):
        return f"{_attribute(head)}({_attribute(backbone)}(x).flatten(1))", None
    if backbone is not None:
        return f"{_attribute(backbone)}(x).flatten(1)", None
    child = _first_child_with_parameters(pl_module)
    if child is not None:
        kind = type(pl_module.get_submodule(child)).__name__
        return f"{_attribute(child)}(x).flatten(1)", f"`{child}` ({kind}) is taken to map the input to the embeddings"
    return "pl_module(x).flatten(1)", (f"`{type(pl_module).__name__}` defines no forward(): call the network that "
                                       "makes the embeddings here")


def describe_batch(batch: Any, *, max_items: int = 6, _depth: int = 0) -> str:
    """A short description of a batch: its containers, and each tensor's shape and dtype.

    Examples:
        >>> views = (torch.zeros(16, 3, 32, 32), torch.zeros(16, 3, 32, 32))
        >>> describe_batch((views, torch.zeros(16, dtype=torch.long)))
        '((Tensor[16, 3, 32, 32] float32, Tensor[16, 3, 32, 32] float32), Tensor[16] int64)'
        >>> describe_batch({"image": torch.zeros(8, 5), "label": [1, 2]})
        "{'image': Tensor[8, 5] float32, 'label': [1, 2]}"
    """
    if isinstance(batch, Tensor):
        return f"Tensor{list(batch.shape)} {str(batch.dtype).removeprefix('torch.')}"
    if _depth >= 4:
        return "..."
    if isinstance(batch, Mapping):
        items = [f"{k!r}: {describe_batch(v, max_items=max_items, _depth=_depth + 1)}"
                 for k, v in list(batch.items())[:max_items]]
        return "{" + ", ".join(items) + (f", ... ({len(batch)} keys)" if len(batch) > max_items else "") + "}"
    if isinstance(batch, (tuple, list)):
        items = [describe_batch(v, max_items=max_items, _depth=_depth + 1) for v in list(batch)[:max_items]]
        if len(batch) > max_items:
            items.append(f"... ({len(batch)} items)")
        named = type(batch).__name__ if type(batch) not in (tuple, list) else ""  # a namedtuple
        if isinstance(batch, list):
            return f"{named}[{', '.join(items)}]"
        return f"{named}({', '.join(items)}{',' if len(items) == 1 else ''})"
    text, kind = repr(batch), type(batch).__name__
    return text if len(text) <= 40 and not text.startswith("<") else \
        f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"


def _children(obj: Any, path: str) -> list[tuple[str, Any]]:
    if isinstance(obj, Mapping):
        return [(f"{path}[{k!r}]", v) for k, v in obj.items()]
    if isinstance(obj, (tuple, list)):
        return [(f"{path}[{i}]", v) for i, v in enumerate(obj)]
    return []


def _is_input(obj: Any) -> bool:
    return isinstance(obj, Tensor) and torch.is_floating_point(obj) and obj.ndim >= 2


def _find_views(obj: Any, path: str = "batch", depth: int = 0) -> list[tuple[str, Tensor]]:
    """The first container (outermost first) holding two or more floating tensors of the same shape: the views."""
    children = _children(obj, path)
    inputs = [(p, v) for p, v in children if _is_input(v)]
    views = [(p, v) for p, v in inputs if v.shape == inputs[0][1].shape]
    if len(views) >= 2:
        return views
    if depth < 4:
        for p, v in children:
            found = _find_views(v, p, depth + 1)
            if found:
                return found
    return []


def _find_input(batch: Any) -> tuple[str, Tensor] | None:
    """The batch's input: its first floating tensor of 2 or more dimensions (else any such, else any tensor)."""
    found: list[tuple[str, Tensor]] = []

    def walk(obj: Any, path: str, depth: int) -> None:
        if isinstance(obj, Tensor):
            found.append((path, obj))
        elif depth < 5:
            for p, v in _children(obj, path):
                walk(v, p, depth + 1)

    walk(batch, "batch", 0)
    for fits in (_is_input, lambda t: t.ndim >= 2, lambda t: True):
        for path, t in found:
            if fits(t):
                return path, t
    return None


def suggest_embedding_fn(batch: Any = NO_BATCH, pl_module: nn.Module | None = None, *,
                         two_views: bool = False) -> str:
    """Python for an ``embedding_fn`` that fits the batch seen (where its input or views are) and the module.

    The input is the first of the batch's views (two or more floating tensors of one shape side by side,
    e.g. Lightly's ``((view0, view1), labels)``), else its first floating tensor of two or more
    dimensions. The embeddings are ``pl_module(x)`` when the module defines ``forward``; else its
    projection head applied to its backbone (submodules named like ``projection_head``/``projector`` and
    ``backbone``/``encoder``), else its first child with parameters. ``two_views`` (for
    ``spectrum="cross_correlation"``) returns the first two views' embeddings stacked. Without a batch
    (``NO_BATCH``) Lightly's batches are assumed.

    Examples:
        >>> net = torch.nn.Module()
        >>> net.backbone, net.projector = torch.nn.Linear(12, 8), torch.nn.Linear(8, 4)
        >>> batch = {"views": [torch.ones(16, 12), torch.ones(16, 12)], "label": torch.zeros(16)}
        >>> print(suggest_embedding_fn(batch, net))
        def embedding_fn(pl_module, batch):
            x = batch['views'][0]  # the first of the batch's 2 views, Tensor[16, 12] float32
            return pl_module.projector(pl_module.backbone(x).flatten(1))
        <BLANKLINE>
        StepwiseMonitor(embedding_fn=embedding_fn)
        >>> namespace = {"torch": torch}  # the snippet's code, run as the user's script would
        >>> exec(suggest_embedding_fn(batch, net, two_views=True).split("StepwiseMonitor(")[0], namespace)
        >>> tuple(namespace["embedding_fn"](net, batch).shape)
        (32, 4)
    """
    expression, note = _embedding_expression(pl_module)
    lines = ["def embedding_fn(pl_module, batch):"]
    if batch is NO_BATCH:
        views = ["batch[0][0]", "batch[0][1]"]
        where = "Lightly's ((view0, view1), labels) batches assumed: adapt to yours"
        shape = ""
    else:
        found = _find_views(batch)
        views = [path for path, _ in found]
        shape = f", {describe_batch(found[0][1])}" if found else ""
        where = ""
    if views and two_views:
        many = f"first 2 of the batch's {len(views)}" if len(views) > 2 else "batch's 2"
        lines.append(f"    views = [{views[0]}, {views[1]}]  # the {many} views{shape}{' each' if shape else ''}"
                     f"{'; ' + where if where else ''}")
        if note:
            lines.append(f"    # {note}")
        lines.append(f"    return torch.cat([{expression} for x in views])  # the two views stacked: [Z0; Z1]")
    else:
        if views:
            comment = where or f"the first of the batch's {len(views)} views{shape}"
            lines.append(f"    x = {views[0]}  # {comment}")
        else:
            single = _find_input(batch)
            if single is None:
                lines.append("    x = batch  # no tensor in the batch: take the model's input from it")
            else:
                lines.append(f"    x = {single[0]}  # the batch's input, {describe_batch(single[1])}")
            if two_views:
                lines.append('    # one input per sample: spectrum="cross_correlation" needs two views of each sample')
        if note:
            lines.append(f"    # {note}")
        lines.append(f"    return {expression}")
    return "\n".join([*lines, "", "StepwiseMonitor(embedding_fn=embedding_fn)"])


def how_to_point(pl_module: nn.Module | None = None, batch: Any = NO_BATCH, *, two_views: bool = False) -> str:
    """The two ways to point the monitor at the embeddings, fitted to the module and the batch seen.

    The ``module=`` line names a submodule that looks like a backbone or projection head (a placeholder
    when there is none); the ``embedding_fn`` is the one of
    [`suggest_embedding_fn`][lightning_stepwise.embedding_suggestion.suggest_embedding_fn].

    Examples:
        >>> net = torch.nn.Module()
        >>> net.encoder = torch.nn.Linear(4, 2)
        >>> print(how_to_point(net, (torch.ones(8, 4), torch.zeros(8))))
        Point the monitor at the embeddings in one of two ways:
          StepwiseMonitor(module="encoder")   # the output of a submodule (dotted path, or a list of them)
        or with an embedding_fn that fits the batches seen, (Tensor[8, 4] float32, Tensor[8] float32):
        <BLANKLINE>
            def embedding_fn(pl_module, batch):
                x = batch[0]  # the batch's input, Tensor[8, 4] float32
                return pl_module.encoder(x).flatten(1)
        <BLANKLINE>
            StepwiseMonitor(embedding_fn=embedding_fn)
    """
    guesses = (_looks_like(pl_module, "head"), _looks_like(pl_module, "backbone"),
               _first_child_with_parameters(pl_module)) if pl_module is not None else ()
    names = [name for name in guesses if name is not None]
    module_lines = [f'  StepwiseMonitor(module="{name}")   # the output of a submodule (dotted path, or a list of them)'
                    for name in names[:1]] or [
        '  StepwiseMonitor(module="<dotted.path>")   # the output of a submodule (or a list of paths)']
    seen = "" if batch is NO_BATCH else f" that fits the batches seen, {describe_batch(batch)}"
    snippet = "\n".join(f"    {line}" if line else "" for line in
                        suggest_embedding_fn(batch, pl_module, two_views=two_views).splitlines())
    return ("Point the monitor at the embeddings in one of two ways:\n" + "\n".join(module_lines)
            + f"\nor with an embedding_fn{seen}:\n\n{snippet}")
