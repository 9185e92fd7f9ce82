"""llmlab.bench: registry, timing plumbing, JSON and plot output (CPU smoke runs only)."""

from __future__ import annotations

import json
import time

import pytest
import torch

from llmlab import bench, kernels


def _machine() -> bench.Machine:
    return bench.Machine(
        "test cpu", "test-cpu", "cpu", peak_gbs=10.0, peak_tflops=0.5, matmul_dtype="float32"
    )


def _sleepy_benchmark(fail: str | None = None) -> bench.Benchmark:
    """Two providers that sleep, triton 1 ms and eager 3 ms (plus one that fails): work that
    takes measurable time without a GPU. Tests never assert which one was faster."""

    def setup(case, device):
        def sleeper(ms):
            return lambda: time.sleep(ms / 1e3)

        def broken():
            raise RuntimeError("no kernel for this size")

        builders = {"triton": lambda: sleeper(1), "eager": lambda: sleeper(3)}
        if fail:
            builders[fail] = broken
        return builders

    return bench.Benchmark(
        name="sleepy",
        title="Sleeping",
        x_label="size (items)",
        metric="GB/s",
        cases=lambda scale: [bench.Case("only panel", x, {"n": x}) for x in (1, 2)],
        setup=setup,
        work=lambda case: 1e6 * case.params["n"],
    )


def test_registry_discovers_kernel_benchmarks():
    found = bench.registry()
    assert set(kernels.load_all()) <= set(found)  # every kernel has a spec in bench.specs
    for b in found.values():
        for scale in bench.SCALES:
            cases = b.cases(scale)
            assert cases and all(b.work(c) > 0 for c in cases)


def test_flash_attention_flops_convention():
    b = bench.registry()["flash_attention"]
    by_panel = {(c.panel, c.x): c for c in b.cases("full")}
    forward = by_panel[("bf16, d=64, non-causal, forward", 4096)]
    assert forward.params["batch"] * forward.params["seq"] == 16384  # 16k tokens per batch
    assert b.work(forward) == 4 * 4 * 16 * 4096**2 * 64
    assert b.work(by_panel[("bf16, d=64, causal, forward", 4096)]) == b.work(forward) / 2
    assert b.work(by_panel[("bf16, d=64, non-causal, forward+backward", 4096)]) == 3.5 * b.work(
        forward
    )


def test_softmax_bytes_convention():
    b = bench.registry()["softmax"]
    case = next(c for c in b.cases("full") if c.panel == "bfloat16, forward" and c.x == 4096)
    assert b.work(case) == 2 * 4096 * 4096 * 2  # read x and write y, 2 bytes each


def test_run_records_speedups_errors_and_writes(tmp_path):
    record = bench.run(
        _sleepy_benchmark(fail="compile"), _machine(), "cpu", scale="quick", log=lambda s: None
    )
    rows = {(e["x"], e["provider"]): e for e in record["results"]}
    # The ratio of the two timings is recorded; its value depends on the machine's load, so
    # only its definition is checked, never a speed.
    assert rows[(1, "triton")]["triton_speedup"] == 1.0
    eager, triton = rows[(1, "eager")], rows[(1, "triton")]
    assert eager["triton_speedup"] == pytest.approx(eager["ms"] / triton["ms"])
    assert rows[(2, "compile")]["error"].startswith("RuntimeError: no kernel")
    assert rows[(2, "triton")]["throughput"] == pytest.approx(
        2e6 / (rows[(2, "triton")]["ms"] * 1e-3) / 1e9
    )
    assert rows[(2, "triton")]["share_of_peak"] == pytest.approx(
        rows[(2, "triton")]["throughput"] / 10.0
    )

    table = bench.format_table(record)
    assert "only panel" in table and "x eager" in table and "err" in table

    json_path, png_path = bench.write(record, tmp_path)
    assert json_path == tmp_path / "test-cpu" / "sleepy.json"
    assert json.loads(json_path.read_text())["results"][0]["provider"] == "triton"
    assert png_path.stat().st_size > 1000


def test_cpu_smoke_run_from_the_command_line(tmp_path, capsys):
    assert bench.main(["--cpu", "--out", str(tmp_path), "softmax", "flash_attention"]) == 0
    out = capsys.readouterr().out
    assert "Row-wise softmax" in out and "FlashAttention-2" in out
    (folder,) = tmp_path.iterdir()
    for name in ("softmax", "flash_attention"):
        record = json.loads((folder / f"{name}.json").read_text())
        assert record["device"]["kind"] == "cpu"
        assert {"torch", "triton", "python"} <= set(record["versions"])
        assert record["results"] and all(e["provider"] == "eager" for e in record["results"])
        assert all(e["ms"] > 0 and e["throughput"] > 0 for e in record["results"])
        assert (folder / f"{name}.png").stat().st_size > 1000


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message of a machine without CUDA"
)
def test_without_cuda_says_so_and_exits_0(capsys, tmp_path):
    assert bench.main(["--out", str(tmp_path)]) == 0
    assert "need a CUDA device" in capsys.readouterr().out
    assert not any(tmp_path.iterdir())


def test_list_and_unknown_names(capsys):
    assert bench.main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert "softmax" in listed and "flash_attention" in listed
    assert bench.main(["no_such_kernel"]) == 2


def test_register_and_validation():
    sleepy = bench.register(_sleepy_benchmark())
    try:
        assert bench.registry()["sleepy"] is sleepy
    finally:
        bench._REGISTERED.pop("sleepy")
    with pytest.raises(ValueError, match="metric"):
        bench.Benchmark("x", "X", "n", "ms", lambda s: [], lambda c, d: {}, lambda c: 1.0)
    with pytest.raises(ValueError, match="name"):
        bench.Benchmark("Bad Name", "X", "n", "GB/s", lambda s: [], lambda c, d: {}, lambda c: 1.0)
    with pytest.raises(TypeError, match="benchmark"):
        bench.register("softmax")


def test_slugify():
    assert bench.slugify("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert bench.slugify("  ") == "unknown"


def test_run_filters_providers_and_panels():
    sleepy = _sleepy_benchmark(fail="compile")
    record = bench.run(
        sleepy, _machine(), "cpu", scale="quick", providers=["triton"], log=lambda s: None
    )
    assert {e["provider"] for e in record["results"]} == {"triton"}
    record = bench.run(
        sleepy, _machine(), "cpu", scale="quick", panel="no such panel", log=lambda s: None
    )
    assert record["results"] == []
