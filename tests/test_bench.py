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


def _three_providers() -> bench.Benchmark:
    """triton returns the reference's output off by 1%, compile the same as the reference."""

    def setup(case, device):
        ref = torch.arange(1.0, 5.0) * case.params["n"]
        return {
            "triton": lambda: lambda: (ref * 1.01, ref),
            "compile": lambda: lambda: (ref.clone(), ref),
            "eager": lambda: lambda: (ref, ref),
        }

    return bench.Benchmark(
        name="three",
        title="Three",
        x_label="size (items)",
        metric="GB/s",
        cases=lambda scale: [bench.Case(p, x, {"n": x}) for p in ("a", "b") for x in (1, 2, 4)],
        setup=setup,
        work=lambda case: 1e3 * case.params["n"],
    )


def test_run_filters_sizes_runs_compile_at_some_and_compares_outputs():
    record = bench.run(
        _three_providers(),
        _machine(),
        "cpu",
        scale="quick",
        panel="b",
        xs=[2, 4],
        compile_xs=[4],
        log=lambda s: None,
    )
    seen = {(e["panel"], e["x"], e["provider"]) for e in record["results"]}
    assert seen == {
        ("b", 2, "triton"),
        ("b", 2, "eager"),
        ("b", 4, "triton"),
        ("b", 4, "compile"),
        ("b", 4, "eager"),
    }
    rows = {(e["x"], e["provider"]): e for e in record["results"]}
    # max |out - ref| / max |ref| over both outputs: 1% of the largest value, on triton only.
    assert rows[(4, "triton")]["max_rel_diff"] == pytest.approx(0.01)
    assert rows[(4, "triton")]["compared_with"] == "eager"
    assert rows[(4, "compile")]["max_rel_diff"] == 0.0
    assert "max_rel_diff" not in rows[(4, "eager")]
    assert "rel diff" in bench.format_table(record) and "1.0e-02" in bench.format_table(record)
    assert "stopped_at_deadline" not in record


def test_run_starts_no_case_after_the_deadline():
    lines = []
    record = bench.run(
        _three_providers(),
        _machine(),
        "cpu",
        scale="quick",
        deadline=time.monotonic() - 1,
        log=lines.append,
    )
    assert record["results"] == [] and record["stopped_at_deadline"] is True
    assert "deadline reached" in lines[0]


def test_max_rel_diff_needs_paired_outputs():
    a = [torch.ones(3)]
    assert bench._max_rel_diff(a, [torch.ones(4)]) is None
    assert bench._max_rel_diff(a, a + a) is None
    assert bench._max_rel_diff([torch.zeros(2)], [torch.zeros(2)]) == 0.0


def test_command_line_size_filters(tmp_path, capsys):
    assert bench.main(["--cpu", "--out", str(tmp_path), "softmax", "--x", "100"]) == 0
    (folder,) = tmp_path.iterdir()
    record = json.loads((folder / "softmax.json").read_text())
    assert {e["x"] for e in record["results"]} == {100}
    with pytest.raises(SystemExit, match="--x: expected comma-separated integers"):
        bench.main(["--cpu", "--out", str(tmp_path), "--x", "4k"])


def test_device_check_merges_the_compile_pass(root, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "device_check", root / "benchmarks" / "device_check.py"
    )
    device_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(device_check)
    first = {"results": [{"panel": "p", "x": 1, "provider": "triton", "ms": 2.0}]}
    extra = {
        "results": [
            {"panel": "p", "x": 1, "provider": "triton", "ms": 9.0},
            {"panel": "p", "x": 1, "provider": "compile", "ms": 3.0},
        ],
        "stopped_at_deadline": True,
    }
    merged = device_check.merge(first, extra)
    assert [e["provider"] for e in merged["results"]] == ["triton", "compile"]
    assert merged["results"][1]["triton_speedup"] == 1.5  # against the first pass's triton
    assert merged["stopped_at_deadline"] is True
    # Every benchmark of the plan exists; the CPU plumbing run writes a record for each.
    names = {name for name, *_ in device_check.PLAN} - set(device_check.MANY_ROWS)
    assert names <= set(bench.registry())
    assert {base for base, _ in device_check.MANY_ROWS.values()} <= set(bench.registry())
    assert device_check.main(["--cpu", "--out", str(tmp_path), "--only", "softmax,rope"]) == 0
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert {p.name for p in folder.glob("*.json")} == {"softmax.json", "rope.json"}


def test_committed_reads_records_by_device_and_name(tmp_path):
    assert bench.committed(["softmax"], root=tmp_path / "missing") == []
    for device, names in (("b-gpu", ("softmax", "rope")), ("a-gpu", ("softmax",))):
        (tmp_path / device).mkdir()
        for name in names:
            (tmp_path / device / f"{name}.json").write_text(
                json.dumps({"benchmark": name, "d": device})
            )
    found = bench.committed(["rope", "softmax"], root=tmp_path)
    assert [(r["d"], r["benchmark"]) for r in found] == [
        ("a-gpu", "softmax"),
        ("b-gpu", "rope"),
        ("b-gpu", "softmax"),
    ]
    # The checkout's own results: the H200 run is committed.
    assert any(r["device"]["name"] == "NVIDIA H200" for r in bench.committed(["flash_attention"]))
