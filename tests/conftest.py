"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models: one thread is many times faster when other processes share the CPUs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def isolated(tmp_path, monkeypatch, one_thread):
    """A test's own state file, no progress bars, one thread (tiny models, a shared CPU)."""
    monkeypatch.setenv("BOOMERANG_STATE", str(tmp_path / "state.json"))
    monkeypatch.setenv("BOOMERANG_PROGRESS", "0")
    yield
