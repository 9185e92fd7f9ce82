"""Shared pytest set-up: nbval compares what a chapter shows, not its progress bars."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Tests never reach the model hub; assets come from the PyPI wheels' cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_configure(config):
    # Under pytest-xdist each worker would start one torch thread per core: N workers on N
    # cores then fight over them (a 15 s training test took minutes). Share the cores instead.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # notebook kernels started by the tests


def pytest_collectstart(collector):
    # tqdm bars and library warnings go to stderr and vary run to run; widget views and HTML
    # carry random ids. None of them is what a checked cell claims.
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += (
            "stderr",
            "text/html",
            "application/javascript",
            "application/vnd.jupyter.widget-view+json",
        )


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(autouse=True)
def fresh_check_registry(monkeypatch):
    """Each test starts with an empty check registry and no check log."""
    from llmlab import checks

    monkeypatch.delenv(checks.LOG_ENV_VAR, raising=False)
    checks.clear_results()
    yield
    checks.clear_results()


@pytest.fixture
def interpret(monkeypatch):
    """Run Triton kernels in the CPU interpreter for this test (kernels decide at launch)."""
    pytest.importorskip("triton")
    from llmlab import kernels

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels.backend().name == "interpreter"
