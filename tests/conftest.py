import pytest


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path, monkeypatch):
    """Trainers without a logger write to the working directory: keep that out of the checkout."""
    monkeypatch.chdir(tmp_path)
