"""llmlab.env (device choice, seeding) and llmlab.course.doctor (module and command line)."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
import torch

from llmlab import env
from llmlab.course import doctor as doc


def test_pick_device_defaults_to_best_available(monkeypatch):
    monkeypatch.delenv(env.DEVICE_ENV, raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and env._mps_available():
        expected = "mps"
    assert env.pick_device().type == expected


def test_pick_device_honours_environment(monkeypatch):
    monkeypatch.setenv(env.DEVICE_ENV, "cpu")
    assert env.pick_device() == torch.device("cpu")


@pytest.mark.parametrize("bad", ["gpu", "tpu", "cuda0"])
def test_pick_device_rejects_unknown_kinds(monkeypatch, bad):
    monkeypatch.setenv(env.DEVICE_ENV, bad)
    with pytest.raises(ValueError, match="LLMLAB_DEVICE.*expected one of cuda, mps, cpu"):
        env.pick_device()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_pick_device_refuses_missing_cuda():
    with pytest.raises(ValueError, match="no CUDA device"):
        env.pick_device("cuda")


def test_seed_everything_repeats_all_generators():
    import numpy as np

    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    env.seed_everything(123)
    first = draw()
    env.seed_everything(123)
    assert draw() == first
    env.seed_everything(124)
    assert draw() != first


@pytest.mark.parametrize("bad", [1.5, "0", None, True, -1, 2**32])
def test_seed_everything_validates(bad):
    with pytest.raises((TypeError, ValueError), match="seed"):
        env.seed_everything(bad)


def test_doctor_reports_everything_needed():
    report = doc.doctor()
    topics = {finding.topic for finding in report.findings}
    for needed in (
        "python",
        "torch",
        "triton",
        "transformers",
        "bitsandbytes",
        "device",
        "network",
    ):
        assert needed in topics
    assert "asset smollm2" in topics and "asset minilm" in topics
    assert report.ok, str(report)
    assert "Everything the course needs is here." in str(report)


def test_doctor_flags_missing_package_with_fix(monkeypatch):
    real = env.package_version
    monkeypatch.setattr(env, "package_version", lambda d: None if d == "transformers" else real(d))
    report = doc.doctor(check_assets=False)
    assert not report.ok
    text = str(report)
    assert "transformers" in text and "not installed" in text and "fix: make lab" in text


def test_doctor_flags_missing_assets(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    report = doc.doctor()
    assert not report.ok
    assert "fix: python -m llmlab assets fetch" in str(report)


def test_doctor_shows_no_machine_path():
    # A saved notebook output must not show where the author's checkout or home folder is.
    from pathlib import Path

    from llmlab import course

    text = str(doc.doctor())
    assert str(Path.home()) not in text and str(course.repo_root()) not in text
    assert doc.short_path(Path.home() / "x") == "~/x"
    assert doc.short_path(course.repo_root() / "a" / "b") == "a/b"
    assert doc.short_path("/usr/bin/python3") == "/usr/bin/python3"


def test_doctor_command_exit_status(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "llmlab", "doctor"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "llmlab", "doctor"],
        capture_output=True,
        text=True,
        env={**_environ(), "LLMLAB_CACHE": str(tmp_path)},
    )
    assert missing.returncode == 1
    assert "python -m llmlab assets fetch" in missing.stdout


def test_import_llmlab_loads_no_heavy_library():
    """``import llmlab`` stays fast by importing nothing heavy (measured by what loads, not by a
    timer: a timing assert fails on a busy machine)."""
    heavy = "import sys, llmlab; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", heavy], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_peak_allocated_bytes_on_the_cpu_counts_what_lives_at_once():
    n = 256

    def two_matrices_at_once():
        a = torch.ones(n, n)
        b = a * 2  # a and b live together: 2 * n * n * 4 bytes
        del a, b
        c = torch.ones(n, n)  # after both are freed: no new peak
        del c

    peak = env.peak_allocated_bytes(two_matrices_at_once)
    assert 2 * n * n * 4 <= peak < 2 * n * n * 4 + 1024  # plus a scalar or two


def test_autocast_dtype_follows_the_cpu_flags(monkeypatch):
    import torch

    from llmlab import env

    assert env.autocast_dtype("cpu") == (torch.bfloat16 if env.cpu_has_fast_bf16() else None)
    assert env.autocast_dtype("mps") is None
    monkeypatch.setattr(env, "cpu_has_fast_bf16", lambda: False)
    assert env.autocast_dtype("cpu") is None
    monkeypatch.setattr(env, "cpu_has_fast_bf16", lambda: True)
    assert env.autocast_dtype("cpu:0") == torch.bfloat16


def test_default_precision_names_the_autocast_dtype(monkeypatch):
    from llmlab import env

    monkeypatch.setattr(env, "cpu_has_fast_bf16", lambda: True)
    assert env.default_precision("cpu") == "bf16"
    monkeypatch.setattr(env, "cpu_has_fast_bf16", lambda: False)
    assert env.default_precision("cpu") == "fp32"
    assert env.default_precision("mps") == "fp32"
