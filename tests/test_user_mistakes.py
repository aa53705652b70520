"""The mistakes a new user makes, and what the monitor tells them.

Wrong argument types and values fail at construction, naming the argument, what was given and the fix;
a module path that names no submodule fails at fit start with the close matches; when no embeddings
are found, the error's ``embedding_fn`` fits the batch the model is given (and runs); a one-view model
under ``spectrum="cross_correlation"`` warns once and skips instead of measuring nonsense; the printed
line of a learned mode does not mix up a mode's number with the count.
"""

from __future__ import annotations

import re
import textwrap
import warnings
from collections import namedtuple
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from helpers import make_ssl_module, pair_loader, pl_namespace, trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_stepwise import NoEmbeddingFoundError, StepwiseMonitor, StepwiseWarning
from lightning_stepwise.capture import (
    NO_BATCH,
    batch_size_of,
    find_tracking_points,
    two_view_problem,
)
from lightning_stepwise.embedding_suggestion import describe_batch, suggest_embedding_fn
from lightning_stepwise.tracker import Measurement, SpectrumTracker

pl = pl_namespace("lightning.pytorch")


# ------------------------------------------------------------------ 1. checks at construction

# (arguments, error, then pieces the message must hold: the argument, what was given, the fix)
CONSTRUCTION_MISTAKES = [
    ({"module": 42}, TypeError, "StepwiseMonitor(module=...)", "got 42 (int)", "Leave module out"),
    ({"module": []}, ValueError, "StepwiseMonitor(module=...)", "got an empty list", "Leave module out"),
    ({"module": ""}, ValueError, "StepwiseMonitor(module=...)", "got an empty path", "Leave module out"),
    ({"module": ["projection_head", 3]}, TypeError, "StepwiseMonitor(module=...)", "got 3 (int) in the list",
     "Leave module out"),
    ({"module": lambda pl_module, batch: batch}, TypeError, "StepwiseMonitor(module=...)", "got a function",
     "Did you mean embedding_fn=...?"),
    ({"module": torch.zeros(3, 2)}, TypeError, "StepwiseMonitor(module=...)", "got a Tensor of shape (3, 2)",
     "Pass the module that makes these embeddings"),
    ({"every_n_steps": "sometimes"}, ValueError, "StepwiseMonitor(every_n_steps=...)", "got 'sometimes' (str)",
     "every_n_steps='auto'"),
    ({"every_n_steps": 2.0}, TypeError, "StepwiseMonitor(every_n_steps=...)", "got 2.0 (float)",
     "E.g. every_n_steps=2"),
    ({"every_n_steps": True}, TypeError, "StepwiseMonitor(every_n_steps=...)", "got True (bool)",
     "E.g. every_n_steps=50"),
    ({"every_n_steps": 0}, ValueError, "StepwiseMonitor(every_n_steps=...)", "got 0 (int)", "int >= 1"),
    ({"window": 1024.0}, TypeError, "StepwiseMonitor(window=...)", "got 1024.0 (float)", "E.g. window=1024"),
    ({"window": 1}, ValueError, "StepwiseMonitor(window=...)", "got 1 (int)", "int >= 2"),
    ({"top_k": -1}, ValueError, "StepwiseMonitor(top_k=...)", "got -1 (int)", "E.g. top_k=256"),
    ({"mode_directions": "64"}, TypeError, "StepwiseMonitor(mode_directions=...)", "got '64' (str)",
     "E.g. mode_directions=64"),
    ({"log_top_k": None}, TypeError, "StepwiseMonitor(log_top_k=...)", "got None (NoneType)", "int >= 0"),
    ({"max_history": 1}, ValueError, "StepwiseMonitor(max_history=...)", "got 1 (int)", "int >= 2"),
    ({"lr_optimizer": -1}, ValueError, "StepwiseMonitor(lr_optimizer=...)", "got -1 (int)", "trainer.optimizers"),
    ({"spectrum": "cross-correlation"}, ValueError, "StepwiseMonitor(spectrum=...)", "got 'cross-correlation' (str)",
     "Did you mean spectrum='cross_correlation'?"),
    ({"spectrum": 2}, TypeError, "StepwiseMonitor(spectrum=...)", "got 2 (int)", "'covariance', 'cross_correlation'"),
    ({"plot_x": "Time"}, ValueError, "StepwiseMonitor(plot_x=...)", "got 'Time' (str)", "Did you mean plot_x='time'?"),
    ({"normalize": "yes"}, TypeError, "StepwiseMonitor(normalize=...)", "got 'yes' (str)", "True, False or None"),
    ({"strict": 1}, TypeError, "StepwiseMonitor(strict=...)", "got 1 (int)", "True or False"),
    ({"prog_bar": "no"}, TypeError, "StepwiseMonitor(prog_bar=...)", "got 'no' (str)", "True or False"),
    ({"verbose": None}, TypeError, "StepwiseMonitor(verbose=...)", "got None (NoneType)", "True or False"),
    ({"save_figure": "png"}, TypeError, "StepwiseMonitor(save_figure=...)", "got 'png' (str)", "True or False"),
    ({"embedding_fn": "backbone"}, TypeError, "StepwiseMonitor(embedding_fn=...)", "got 'backbone' (str)",
     "Did you mean module='backbone'?"),
    ({"embedding_fn": lambda batch: batch}, TypeError, "StepwiseMonitor(embedding_fn=...)", "`<lambda>(batch)`",
     "E.g. embedding_fn=lambda pl_module, batch:"),
    ({"embedding_fn": nn.Linear(2, 2)}, TypeError, "StepwiseMonitor(embedding_fn=...)", "(Linear)",
     "pass module=..."),
    ({"embedding_fn": 3}, TypeError, "StepwiseMonitor(embedding_fn=...)", "got 3 (int)",
     "E.g. embedding_fn=lambda pl_module, batch:"),
    ({"onset_options": [("min_rise", 10.0)]}, TypeError, "StepwiseMonitor(onset_options=...)",
     "got [('min_rise', 10.0)] (list)", "onset_options={'min_rise': 10.0}"),
    ({"onset_options": {"min_rsie": 10.0}}, ValueError, "StepwiseMonitor(onset_options=...)", "['min_rsie']",
     "Did you mean 'min_rise'?"),
    ({"onset_options": {"min_rise": "10"}}, TypeError, "min_rise takes a number", "got '10' (str)", "default 10.0"),
    ({"dirpath": 3}, TypeError, "StepwiseMonitor(dirpath=...)", "got 3 (int)", "pathlib.Path"),
    ({"name": ""}, ValueError, "StepwiseMonitor(name=...)", "got '' (str)", "E.g. name='stepwise'"),
    ({"name": None}, TypeError, "StepwiseMonitor(name=...)", "got None (NoneType)", "E.g. name='stepwise'"),
    ({"theory": "linear"}, TypeError, "StepwiseMonitor(theory=...)", "got 'linear' (str)",
     "LinearSSLTheory.from_views"),
]


@pytest.mark.parametrize("kwargs, error, argument, given, fix", CONSTRUCTION_MISTAKES,
                         ids=[f"{next(iter(case[0]))}-{i}" for i, case in enumerate(CONSTRUCTION_MISTAKES)])
def test_a_wrong_argument_fails_at_construction_naming_it_what_was_given_and_the_fix(kwargs, error, argument, given,
                                                                                       fix):
    with pytest.raises(error) as caught:
        StepwiseMonitor(**kwargs)
    assert type(caught.value) is error  # not a subclass raised by accident deeper down
    message = str(caught.value)
    for piece in (argument, given, fix):
        assert piece in message, f"{piece!r} not in {message!r}"


def test_a_data_loader_passed_first_is_refused_with_the_probe_it_was_meant_for():
    loader = pair_loader()
    with pytest.raises(TypeError) as caught:
        StepwiseMonitor(loader)
    message = str(caught.value)
    assert message.startswith("StepwiseMonitor(module=...) takes a module path like 'projection_head'")
    assert "got a DataLoader" in message and "Did you mean LinearProbe(train_loader, val_loader)?" in message
    with pytest.raises(TypeError, match="got a PairDataset.*LinearProbe"):
        StepwiseMonitor(loader.dataset)


def test_the_lightning_module_itself_is_refused_as_module():
    with pytest.raises(TypeError, match=r"got the LightningModule itself \(TinySSL\).*trainer.fit\(model"):
        StepwiseMonitor(make_ssl_module())


def test_valid_arguments_are_kept_and_normalised(tmp_path):
    model = make_ssl_module()
    monitor = StepwiseMonitor(module=[model.projection_head, "criterion"], window=np.int64(64),
                              every_n_steps=np.int32(5), dirpath=str(tmp_path), normalize=np.bool_(True),
                              spectrum="cross_correlation", onset_options={"min_rise": 5, "smoothing": 3})
    assert monitor.window == 64 and type(monitor.window) is int
    assert monitor.every_n_steps == 5 and type(monitor.every_n_steps) is int
    assert monitor.normalize is True and monitor.dirpath == tmp_path
    assert monitor.onset_options == {"min_rise": 5, "smoothing": 3}
    assert StepwiseMonitor().every_n_steps == "auto"
    # a submodule given as a module is keyed by its class in checkpoints (its repr is long and not a name)
    assert "'<Linear>', 'criterion'" in monitor.state_key


# ------------------------------------------------------------------ 2. a path that names no submodule


def test_an_unknown_path_names_the_close_matches_and_what_auto_detection_would_measure():
    model = make_ssl_module()
    with pytest.raises(NoEmbeddingFoundError) as caught:
        find_tracking_points(model, "backbon")
    lines = str(caught.value).splitlines()
    assert lines[0] == ('StepwiseMonitor(module="backbon"): `TinySSL` has no submodule `backbon`. '
                        "Did you mean `backbone`?")
    assert lines[1].startswith("Without module=, it would measure the online inputs of `criterion` (BarlowTwinsLoss)")
    assert lines[2:lines.index("Submodules found:")] == [  # the candidates auto-detection considers
        "  backbone: Sequential (its output)", "  projection_head: Linear (its output)",
        "  criterion: BarlowTwinsLoss (a lightly.loss loss: its online inputs)"]
    for path, meant in (("projection_haed", "`projection_head`"), ("model.projection_head", "`projection_head`"),
                        ("head", "`projection_head`"), ("Criterion", "`criterion`")):
        with pytest.raises(NoEmbeddingFoundError, match=re.escape(f"Did you mean {meant}?")):
            find_tracking_points(model, ["backbone", path])  # the bad entry of a list is the one named
    with pytest.raises(NoEmbeddingFoundError) as caught:
        find_tracking_points(model, "teacher")
    assert "Did you mean" not in str(caught.value).splitlines()[0]


def test_an_unknown_path_stops_fit_at_set_up_before_any_training_step():
    model = make_ssl_module()
    before = [p.detach().clone() for p in model.parameters()]
    t = trainer(max_steps=4, callbacks=[StepwiseMonitor(module="backbon")])
    with pytest.raises(NoEmbeddingFoundError, match=r"Did you mean `backbone`\?"):
        t.fit(model, pair_loader())
    assert t.global_step == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_a_submodule_can_be_given_as_a_module_and_one_of_another_model_is_refused():
    model = make_ssl_module()
    monitor = StepwiseMonitor(model.projection_head, every_n_steps=2, window=32)
    trainer(max_steps=4, callbacks=[monitor]).fit(model, pair_loader())
    assert [p.name for p in monitor.tracking_points] == ["projection_head"]
    assert monitor.history["step"].tolist() == [0, 2]

    other = make_ssl_module()
    with pytest.raises(NoEmbeddingFoundError, match=r"(?s)not a submodule of the `TinySSL` being fitted.*Did you "
                                                    r"mean `backbone.0` or `projection_head`\?"):
        trainer(max_steps=2, callbacks=[StepwiseMonitor(other.projection_head)]).fit(model, pair_loader())


# ------------------------------------------------------------------ 3. an embedding_fn that fits the batch seen


class WithForward(nn.Module):
    """A module whose forward makes the embeddings."""

    def __init__(self, dim: int = 12) -> None:
        super().__init__()
        self.encoder = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class BackboneAndProjector(pl.LightningModule):
    """Lightly's layout under other names and without forward (LightningModule's forward does not count)."""

    def __init__(self, dim: int = 12) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(dim, 6), nn.ReLU())
        self.projector = nn.Linear(6, 3)
        self.loss_fn = nn.MSELoss()


class OneNet(nn.Module):
    """No forward, no backbone-like name: its first child with parameters is taken."""

    def __init__(self, dim: int = 12) -> None:
        super().__init__()
        self.net = nn.Linear(dim, 5)


B, D = 8, 12
Pair = namedtuple("Pair", ["views", "label"])


def views(n: int = 2, shape: tuple[int, ...] = (B, D)) -> list[torch.Tensor]:
    return [torch.randn(*shape) for _ in range(n)]


# (batch, where the input is, how many views the snippet says there are (0: one input))
BATCHES = {
    "lightly": (lambda: (tuple(views()), torch.zeros(B, dtype=torch.long)), "batch[0][0]", 2),
    "image_label": (lambda: (torch.randn(B, D), torch.zeros(B)), "batch[0]", 0),
    "dict": (lambda: {"label": torch.zeros(B), "image": torch.randn(B, D)}, "batch['image']", 0),
    "dict_of_views": (lambda: {"views": views(), "label": torch.zeros(B)}, "batch['views'][0]", 2),
    "tensor": (lambda: torch.randn(B, D), "batch", 0),
    "list_of_views": (lambda: views(3), "batch[0]", 3),
    "flat_views": (lambda: (*views(), torch.zeros(B)), "batch[0]", 2),
    "multi_crop": (lambda: ((*views(2), *views(4, (B, 5))), torch.zeros(B), ["a"] * B), "batch[0][0]", 2),
    "namedtuple": (lambda: Pair(tuple(views()), torch.zeros(B)), "batch[0][0]", 2),
    "int_and_float": (lambda: (torch.zeros(B, dtype=torch.long), torch.randn(B, D)), "batch[1]", 0),
}
MODELS = {"forward": (WithForward, "pl_module(x).flatten(1)", 4),
          "backbone_projector": (BackboneAndProjector, "pl_module.projector(pl_module.backbone(x).flatten(1))", 3),
          "one_net": (OneNet, "pl_module.net(x).flatten(1)", 5)}


def run_snippet(snippet: str, model: nn.Module, batch: Any) -> torch.Tensor:
    """Run the suggested code as a user's script would (torch imported) and call its embedding_fn."""
    code, call = snippet.split("\n\n")
    assert call == "StepwiseMonitor(embedding_fn=embedding_fn)"
    namespace: dict[str, Any] = {"torch": torch}
    exec(code, namespace)
    with torch.no_grad():
        return namespace["embedding_fn"](model, batch)


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("batch_name", list(BATCHES))
def test_the_suggested_embedding_fn_fits_the_batch_and_runs(batch_name, model_name):
    make_batch, where, n_views = BATCHES[batch_name]
    make_model, expression, width = MODELS[model_name]
    batch, model = make_batch(), make_model()
    snippet = suggest_embedding_fn(batch, model)
    assert f"    x = {where}  # " in snippet and f"    return {expression}" in snippet
    if n_views:
        assert f"the first of the batch's {n_views} views" in snippet
    out = run_snippet(snippet, model, batch)
    assert out.shape == (B, width)

    stacked = suggest_embedding_fn(batch, model, two_views=True)  # for spectrum="cross_correlation"
    out = run_snippet(stacked, model, batch)
    if n_views:
        assert "views = [" in stacked and "the two views stacked" in stacked
        assert out.shape == (2 * B, width)
        make_views = namespace_views(stacked, batch)
        torch.testing.assert_close(out, torch.cat([model_embed(model, v) for v in make_views]))
    else:
        assert 'spectrum="cross_correlation" needs two views' in stacked and out.shape == (B, width)


def namespace_views(snippet: str, batch: Any) -> list[torch.Tensor]:
    line = next(line for line in snippet.splitlines() if line.strip().startswith("views = "))
    return eval(line.split("=", 1)[1].split("#")[0], {"batch": batch})


def model_embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if isinstance(model, WithForward):
            return model(x)
        if isinstance(model, BackboneAndProjector):
            return model.projector(model.backbone(x))
        return model.net(x)


def test_without_a_batch_or_a_tensor_the_suggestion_says_what_it_assumes():
    snippet = suggest_embedding_fn(NO_BATCH, WithForward())
    assert "x = batch[0][0]  # Lightly's ((view0, view1), labels) batches assumed: adapt to yours" in snippet
    assert run_snippet(snippet, WithForward(), (tuple(views()), None)).shape == (B, 4)
    snippet = suggest_embedding_fn({"path": "a.png"}, WithForward())
    assert "x = batch  # no tensor in the batch: take the model's input from it" in snippet
    snippet = suggest_embedding_fn((torch.randn(B, D),), nn.Module())  # nothing to call: says so
    assert "defines no forward(): call the network that makes the embeddings here" in snippet


def test_batches_are_described_by_structure_and_shapes():
    batch = ((torch.zeros(4, 3), torch.zeros(4, 3)), torch.zeros(4, dtype=torch.long), ["x.png"] * 4)
    assert describe_batch(batch) == ("((Tensor[4, 3] float32, Tensor[4, 3] float32), Tensor[4] int64, "
                                     "['x.png', 'x.png', 'x.png', 'x.png'])")
    assert describe_batch(Pair(torch.zeros(2, 1), 3)) == "Pair(Tensor[2, 1] float32, 3)"
    assert describe_batch(list(range(10))) == "[0, 1, 2, 3, 4, 5, ... (10 items)]"
    assert describe_batch(object()) == "an object"
    assert batch_size_of(batch) == 4 and batch_size_of({"x": torch.zeros(5, 2), "y": torch.zeros(5)}) == 5


class DictImages(Dataset):
    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(i)
        return {"label": i % 3, "image": torch.randn(D, generator=g)}


class NoHeads(pl.LightningModule):
    """No Lightly loss, no projection_head, no backbone, no forward; dict batches."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(D, 8), nn.ReLU(), nn.Linear(8, 4))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.net(batch["image"]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def dict_loader() -> DataLoader:
    return DataLoader(DictImages(), batch_size=B)


def test_no_embeddings_found_stops_before_training_with_an_embedding_fn_for_the_batch_that_works():
    model = NoHeads()
    before = [p.detach().clone() for p in model.parameters()]
    t = trainer(max_steps=4, callbacks=[StepwiseMonitor()])
    with pytest.raises(NoEmbeddingFoundError) as caught:
        t.fit(model, dict_loader())
    assert t.global_step == 0 and all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    message = str(caught.value)
    assert "Submodules found:\n  net: Sequential" in message
    assert '  StepwiseMonitor(module="net")' in message
    assert "fits the batches seen, {'label': Tensor[8] int64, 'image': Tensor[8, 12] float32}" in message
    snippet = textwrap.dedent(message[message.index("    def embedding_fn"):])
    assert "x = batch['image']" in snippet and "return pl_module.net(x).flatten(1)" in snippet
    # the suggested code, pasted as it is, measures
    namespace: dict[str, Any] = {"torch": torch, "StepwiseMonitor": StepwiseMonitor}
    exec(snippet.replace("StepwiseMonitor(embedding_fn=embedding_fn)", ""), namespace)
    monitor = StepwiseMonitor(embedding_fn=namespace["embedding_fn"], every_n_steps=2, window=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StepwiseWarning)
        trainer(max_steps=4, callbacks=[monitor]).fit(NoHeads(), dict_loader())
    assert monitor.history["step"].tolist() == [0, 2] and monitor.history["eigenvalues"].shape[1] == 4


def test_a_failing_embedding_fn_warns_once_with_one_that_fits_and_training_goes_on():
    monitor = StepwiseMonitor(embedding_fn=lambda pl_module, batch: pl_module(batch[0][0]), every_n_steps=1,
                              window=8)
    t = trainer(max_steps=3, callbacks=[monitor])
    with pytest.warns(StepwiseWarning) as caught:
        t.fit(NoHeads(), dict_loader())
    messages = [str(w.message) for w in caught if "embedding_fn raised" in str(w.message)]
    assert len(messages) == 1 and t.global_step == 3 and monitor.problems["embedding_fn_errors"] == 3
    assert "embedding_fn raised KeyError: 0; batch skipped" in messages[0]
    assert "with batches like {'label': Tensor[8] int64, 'image': Tensor[8, 12] float32}" in messages[0]
    assert "x = batch['image']" in messages[0] and "return pl_module.net(x).flatten(1)" in messages[0]


def test_an_embedding_fn_returning_no_rows_says_what_it_returned():
    monitor = StepwiseMonitor(embedding_fn=lambda pl_module, batch: pl_module.net(batch["image"]).sum(1),
                              every_n_steps=1, window=8)
    with pytest.warns(StepwiseWarning, match=r"embedding_fn returned a float32 Tensor of shape \(8,\), not a "
                                             r"floating Tensor of \(batch, dim\) embeddings"):
        trainer(max_steps=2, callbacks=[monitor]).fit(NoHeads(), dict_loader())
    assert monitor.problems["malformed_batches"] == 2


# ------------------------------------------------------------------ 4. cross-correlation needs two views


@pytest.mark.parametrize("counts, batch_size, problem", [
    ([16, 16], 16, None),                # one forward per view
    ([32], 16, None),                    # both views concatenated
    ([32], None, None),                  # batch size unknown: cannot tell
    ([8, 8, 8, 8], 16, None),            # each view in two chunks
    ([16], 16, "one forward pass of 16 rows for a batch of 16 samples: one view per sample"),
    ([16, 12], 16, "the two halves differ: forward passes of 16 and 12 rows"),
    ([8, 8, 16, 4], None, "the two halves differ: forward passes of 8, 8, 16 and 4 rows"),
    ([7], None, "7 rows, an odd number"),
    ([8, 7], 8, "15 rows, an odd number"),
])
def test_two_view_problem(counts, batch_size, problem):
    assert two_view_problem(counts, batch_size) == problem


def test_the_tracker_skips_one_view_steps_and_keeps_two_view_ones():
    z0, z1 = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    tracker = SpectrumTracker(["head"], every_n_steps=1, window=8, spectrum="cross_correlation")
    with pytest.warns(StepwiseWarning, match=r"not two views of equal size \(one forward pass of 8 rows for a batch "
                                             r"of 8 samples") as caught:
        for step in range(3):
            tracker.start_batch(step)
            tracker.end_batch({"head": [z0]}, batch_size=8)
    assert sum("two views" in str(w.message) for w in caught) == 1  # once, and no "produced no embeddings"
    assert not any("produced no embeddings" in str(w.message) for w in caught)
    assert tracker.problems.counts["malformed_batches"] == 3 and tracker.problems.counts["empty_windows"] == 3
    tracker.start_batch(3)
    tracker.end_batch({"head": [z0, z1]}, batch_size=8)
    tracker.finish(4)
    h = tracker.history("head")
    assert h["step"].tolist() == [3] and h["samples"].tolist() == [8]
    expected = np.linalg.eigvalsh(((z0.T @ z1 + z1.T @ z0) / 16).numpy())[::-1]
    np.testing.assert_allclose(h["eigenvalues"][0], expected, rtol=1e-9)


class OneView(pl.LightningModule):
    """A supervised-style model: one view per step through backbone and projection head."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(D, 8)
        self.projection_head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (x0, _), _ = batch  # the second view is never used
        return self(x0).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_cross_correlation_on_a_one_view_model_warns_once_skips_and_training_goes_on():
    monitor = StepwiseMonitor(every_n_steps=1, window=16, spectrum="cross_correlation", save_figure=False)
    t = trainer(max_steps=4, callbacks=[monitor])
    with pytest.warns(StepwiseWarning) as caught:
        t.fit(OneView(), pair_loader(batch_size=16))
    messages = [str(w.message) for w in caught if issubclass(w.category, StepwiseWarning)]
    assert len(messages) == 1, messages
    assert ("`projection_head` captured rows that are not two views of equal size (one forward pass of 16 rows for "
            "a batch of 16 samples: one view per sample)") in messages[0]
    assert "use spectrum='covariance'" in messages[0]
    assert t.global_step == 4 and len(monitor.history["step"]) == 0
    assert monitor.problems["malformed_batches"] == 4 and monitor.problems["empty_windows"] == 4


def test_cross_correlation_on_a_one_view_model_raises_with_the_fix_when_strict():
    monitor = StepwiseMonitor(every_n_steps=1, window=16, spectrum="cross_correlation", strict=True)
    with pytest.raises(RuntimeError, match=r"strict=True.*one view per sample.*use spectrum='covariance'"):
        trainer(max_steps=4, callbacks=[monitor]).fit(OneView(), pair_loader(batch_size=16))


def test_both_views_through_one_forward_are_still_two_views():
    model = make_ssl_module(concat_views=True, lr=0.0)  # the head sees [x0; x1] in one call: 2B rows
    monitor = StepwiseMonitor(module="projection_head", every_n_steps=1, window=16, spectrum="cross_correlation",
                              save_figure=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StepwiseWarning)
        trainer(max_steps=2, callbacks=[monitor]).fit(model, pair_loader(batch_size=16))
    assert monitor.history["samples"].tolist() == [16, 16]  # pairs
    x0, x1 = next(iter(pair_loader(batch_size=16)))[0]
    with torch.no_grad():
        z0, z1 = (model.projection_head(model.backbone(x)).double() for x in (x0, x1))
    expected = np.linalg.eigvalsh(((z0.T @ z1 + z1.T @ z0) / 32).numpy())[::-1]
    np.testing.assert_allclose(monitor.history["eigenvalues"][0], expected, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ 5. the printed line of a learned mode


def test_the_learned_mode_line_numbers_modes_from_one_and_counts_them_so_far(capsys):
    monitor = StepwiseMonitor()
    onset = {"mode": 2.0, "onset_step": 275.0, "onset_epoch": 37.0}
    measurement = Measurement(point="criterion", step=280, epoch=37, time=0.0, lr=0.1, samples=1024, loss=1.0,
                              eigenvalues=np.ones(3), summary=None, modes_learned=3, new_onsets=[onset],
                              partial=False)
    monitor._announce(SimpleNamespace(is_global_zero=True, progress_bar_callback=None), measurement)
    assert capsys.readouterr().out == "StepwiseMonitor: mode #3 learned at step 275, epoch 37 (3 learned so far)\n"


def test_two_modes_confirmed_by_one_measurement_are_counted_one_after_the_other(capsys):
    monitor = StepwiseMonitor()
    onsets = [{"mode": 0.0, "onset_step": 11.0, "onset_epoch": 0.0}, {"mode": 1.0, "onset_step": 19.0,
                                                                        "onset_epoch": 0.0}]
    measurement = Measurement(point="criterion", step=40, epoch=0, time=0.0, lr=0.1, samples=1024, loss=1.0,
                              eigenvalues=np.ones(3), summary=None, modes_learned=2, new_onsets=onsets,
                              partial=False)
    monitor._announce(SimpleNamespace(is_global_zero=True, progress_bar_callback=None), measurement)
    assert capsys.readouterr().out.splitlines() == [
        "StepwiseMonitor: mode #1 learned at step 11, epoch 0 (1 learned so far)",
        "StepwiseMonitor: mode #2 learned at step 19, epoch 0 (2 learned so far)"]


def test_a_run_that_learns_no_mode_says_why_at_fit_end(tmp_path, capsys):
    monitor = StepwiseMonitor(every_n_steps=2, window=16, save_figure=False)
    trainer = pl.Trainer(max_steps=6, callbacks=[monitor], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(make_ssl_module(), pair_loader())
    out = capsys.readouterr()
    assert monitor.modes_learned == 0
    assert "StepwiseMonitor: no mode learned. Why: too few measurements" in out.out + out.err
