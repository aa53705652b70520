"""The CUDA sync detector's message filter: real synchronising calls count, torch's prototype notice does not.

Runs on the CPU: the filter is pure Python, and the CUDA branch of ``SyncCounter.watching`` is driven
through stand-ins for ``torch.cuda.{get,set}_sync_debug_mode`` that warn as torch does.
"""

import warnings

import pytest
import torch
from sync_counter import SyncCounter, is_sync_warning

# The texts torch raises (TORCH_WARN appends where it was triggered).
NOTICE = ("Synchronization debug mode is a prototype feature and does not yet detect all synchronizing "
          "operations (Triggered internally at /pytorch/torch/csrc/cuda/Module.cpp:1234.)")
REAL = ("called a synchronizing CUDA operation "
        "(Triggered internally at /pytorch/c10/cuda/CUDAFunctions.cpp:191.)")


@pytest.mark.parametrize(("message", "counts"), [
    (REAL, True),
    (NOTICE, False),
    (NOTICE.split(" (Triggered")[0], False),
    (UserWarning(REAL), True),
    (UserWarning(NOTICE), False),
    ("some unrelated warning", False),
])
def test_only_real_synchronisations_count(message, counts):
    assert is_sync_warning(message) is counts


def test_the_cuda_branch_counts_the_real_warning_not_the_notice(monkeypatch):
    mode = [0]

    def set_mode(debug_mode):
        if debug_mode in ("warn", 1):
            warnings.warn(NOTICE, UserWarning, stacklevel=2)
        mode[0] = debug_mode

    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", set_mode)
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: mode[0])
    counter = SyncCounter(cuda=True)
    counter.step = 7
    with counter.watching():
        pass  # only the notice
    assert counter.what == []
    with counter.watching():
        warnings.warn(REAL, UserWarning, stacklevel=1)
    assert counter.what == [(7, REAL[:80])]
    assert mode[0] == 0  # the previous mode is restored
