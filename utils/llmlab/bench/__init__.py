"""Benchmark harness: our Triton kernels against eager PyTorch, torch.compile and vendor ops.

    python -m llmlab.bench                          # every benchmark, full sizes (needs a GPU)
    python -m llmlab.bench softmax --quick          # one benchmark, a few sizes
    python -m llmlab.bench flash_attention --providers triton,sdpa --panel "d=128"
    python -m llmlab.bench --list                   # what is registered
    python -m llmlab.bench --cpu --out /tmp/bench   # plumbing smoke run on the CPU (reference only)

Each run measures the machine first: the bandwidth a device-to-device copy reaches (the
ceiling of any memory-bound kernel) and the bf16 TFLOP/s of a large matmul (the ceiling of a
compute-bound one). Then, for every problem size and every *provider*:

- ``triton``: our op (``llmlab.kernels.<name>``);
- ``eager``: the module's PyTorch ``reference``, as the course writes it;
- ``compile``: ``torch.compile`` of that reference;
- vendor ops where they exist: ``torch`` (e.g. ``torch.softmax``), ``sdpa``
  (``scaled_dot_product_attention`` with the FlashAttention backend).

it records the median time (``triton.testing.do_bench``), the throughput (GB/s for
memory-bound kernels: the bytes a perfect kernel must move, divided by the time; TFLOP/s for
compute-bound ones), the share of the measured peak, how many times faster ``triton`` is than
each provider, and the peak GPU memory of one call (later chapters judge kernels on memory).
Results go to ``benchmarks/results/<device-slug>/<name>.json`` with a plot ``<name>.png``.

A kernel's benchmark (sizes, providers, the bytes or FLOPs of a call) lives in
``llmlab.bench.specs.<kernel>``, whose ``benchmarks()`` returns :class:`Benchmark` objects; this
harness discovers every module there. :func:`register` adds one from anywhere else (a
notebook, a lab).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import importlib.metadata
import json
import math
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

#: Providers in the order tables and plots show them; "triton" is ours.
PROVIDERS = ("triton", "torch", "sdpa", "compile", "eager")
METRICS = ("GB/s", "TFLOP/s")
SCALES = ("full", "quick", "cpu")

#: Datasheet peaks (HBM GB/s, dense bf16 TFLOP/s) by a substring of the device name. Only
#: context for the report: "share of peak" always uses what this run measured.
DATASHEET = {
    "H100 80GB HBM3": (3350, 989),  # H100 SXM5
    "H100 PCIe": (2000, 756),
    "H200": (4800, 989),
    "A100-SXM4-80GB": (2039, 312),
    "A100-SXM4-40GB": (1555, 312),
    "A100 80GB PCIe": (1935, 312),
    "L4": (300, 121),
}


# --------------------------------------------------------------------------------------------
# What a benchmark is
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One problem size: ``x`` is its position on the plot's x axis; cases with the same
    ``panel`` (e.g. ``"bfloat16, forward"``) share a table and a subplot; ``params`` is
    whatever the benchmark's ``setup`` needs to build inputs."""

    panel: str
    x: int
    params: dict = field(default_factory=dict, hash=False)


@dataclass
class Benchmark:
    """A kernel's benchmark.

    - ``cases(scale)``: the problem sizes for ``scale`` in "full", "quick" (a few sizes) and
      "cpu" (tiny, for the plumbing smoke run);
    - ``setup(case, device)``: ``{provider: build}``, where ``build()`` makes the inputs'
      autograd graph if any and returns the zero-argument function to time;
    - ``work(case)``: bytes moved (``metric="GB/s"``) or floating-point operations
      (``metric="TFLOP/s"``) per call, counted for an ideal kernel.
    """

    name: str
    title: str
    x_label: str
    metric: str
    cases: Callable[[str], list[Case]]
    setup: Callable[[Case, object], dict[str, Callable[[], Callable[[], object]]]]
    work: Callable[[Case], float]
    description: str = ""

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric: expected one of {METRICS}, got {self.metric!r}")
        if not re.fullmatch(r"[a-z0-9_]+", self.name):
            raise ValueError(f"name: expected lowercase letters, digits and _, got {self.name!r}")


_REGISTERED: dict[str, Benchmark] = {}


def register(benchmark: Benchmark) -> Benchmark:
    """Add ``benchmark`` to the registry (replacing one of the same name); return it."""
    if not isinstance(benchmark, Benchmark):
        raise TypeError(f"benchmark: expected a Benchmark, got {type(benchmark).__name__}")
    _REGISTERED[benchmark.name] = benchmark
    return benchmark


def registry() -> dict[str, Benchmark]:
    """``{name: Benchmark}``: those of every ``llmlab.bench.specs`` module, plus registered ones."""
    from llmlab.bench import specs

    found: dict[str, Benchmark] = {}
    for module in specs.modules():
        for benchmark in module.benchmarks():
            found[benchmark.name] = benchmark
    found.update(_REGISTERED)
    return found


# --------------------------------------------------------------------------------------------
# The machine: name and measured peaks
# --------------------------------------------------------------------------------------------


@dataclass
class Machine:
    """The device a run measures, and its ceilings as measured at startup."""

    name: str
    slug: str
    kind: str  # "cuda" | "cpu"
    peak_gbs: float  # device-to-device copy
    peak_tflops: float  # large matmul
    matmul_dtype: str
    datasheet: dict | None = None

    def peak(self, metric: str) -> float:
        return self.peak_gbs if metric == "GB/s" else self.peak_tflops

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "slug": self.slug,
            "kind": self.kind,
            "peak_copy_gbs": float(f"{self.peak_gbs:.4g}"),
            "peak_matmul_tflops": float(f"{self.peak_tflops:.4g}"),
            "matmul_dtype": self.matmul_dtype,
            "peaks_measured": True,
            "datasheet": self.datasheet,
        }


def slugify(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def measure_machine(device, quick: bool = False) -> Machine:
    """Name ``device`` and measure its copy bandwidth and matmul throughput."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        n = 2**27 if quick else 2**28  # 512 MiB / 1 GiB of float32: far beyond the L2 cache
        src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
        dst = torch.empty_like(src)
        ms = time_ms(lambda: dst.copy_(src), device, quick)
        gbs = 2 * src.nbytes / (ms * 1e-3) / 1e9  # read + write
        del src, dst
        size = 8192
        a = torch.randn(size, size, dtype=torch.bfloat16, device=device)
        b = torch.randn(size, size, dtype=torch.bfloat16, device=device)
        ms = time_ms(lambda: a @ b, device, quick)
        tflops = 2 * size**3 / (ms * 1e-3) / 1e12
        del a, b
        torch.cuda.empty_cache()
        sheet = next((v for k, v in DATASHEET.items() if k in name), None)
        datasheet = {"hbm_gbs": sheet[0], "bf16_tflops": sheet[1]} if sheet else None
        return Machine(name, slugify(name), "cuda", gbs, tflops, "bfloat16", datasheet)
    name = f"cpu {platform.machine()} ({torch.get_num_threads()} threads)"
    src = torch.rand(2**22)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, quick=True)
    gbs = 2 * src.nbytes / (ms * 1e-3) / 1e9
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    ms = time_ms(lambda: a @ b, device, quick=True)
    tflops = 2 * 256**3 / (ms * 1e-3) / 1e12
    return Machine(name, slugify(f"cpu {platform.machine()}"), "cpu", gbs, tflops, "float32")


# --------------------------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------------------------


def time_ms(fn: Callable[[], object], device, quick: bool = False) -> float:
    """Median milliseconds of one call of ``fn``.

    On CUDA, ``triton.testing.do_bench``: CUDA events around each call, the L2 cache flushed
    between calls so a kernel cannot run from cache what a real model would read from memory.
    On the CPU (smoke runs only), the median of a few ``time.perf_counter`` measurements.
    """
    import torch

    if torch.device(device).type == "cuda":
        from triton.testing import do_bench

        warmup, rep = (10, 30) if quick else (25, 100)
        return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
    fn()
    runs = []
    for _ in range(5 if quick else 15):
        start = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - start) * 1e3)
    return statistics.median(runs)


def peak_memory_mb(fn: Callable[[], object], device) -> tuple[float | None, float | None]:
    """(peak allocated during one call, peak minus what was allocated before it), in MiB.

    The first counts the inputs too; the second is what the op itself needs (outputs,
    workspace, saved activations). ``(None, None)`` off CUDA.
    """
    import torch

    if torch.device(device).type != "cuda":
        return None, None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return peak / 2**20, (peak - before) / 2**20


# --------------------------------------------------------------------------------------------
# Running a benchmark
# --------------------------------------------------------------------------------------------


def run(
    benchmark: Benchmark,
    machine: Machine,
    device,
    scale: str = "full",
    providers: list[str] | None = None,
    panel: str | None = None,
    log=print,
    xs: list[int] | None = None,
    compile_xs: list[int] | None = None,
    deadline: float | None = None,
) -> dict:
    """Run the cases and providers of ``benchmark``; return the JSON-ready record.

    ``providers`` keeps only those providers; ``panel`` only the cases whose panel name
    contains it (e.g. ``"d=128"``); ``xs`` only the cases at those x values; ``compile_xs``
    runs the ``compile`` provider (tens of seconds per case on a GPU) only at those x values.
    ``deadline`` (a ``time.monotonic()`` value) starts no case after it: the record keeps
    the cases done and ``"stopped_at_deadline": True``. The "cpu" scale runs the ``eager``
    reference only.

    Each provider's output at the warm-up call is compared with the reference's (``eager``,
    else a vendor op): ``max_rel_diff`` is ``max |out - ref| / max |ref|`` over the outputs
    (the gradients, for a backward), so a kernel that is fast because it is wrong shows it.
    """
    import torch

    if scale not in SCALES:
        raise ValueError(f"scale: expected one of {SCALES}, got {scale!r}")
    quick = scale != "full"
    results = []
    stopped = False
    for case in benchmark.cases(scale):
        if panel and panel not in case.panel:
            continue
        if xs is not None and case.x not in xs:
            continue
        if deadline is not None and time.monotonic() > deadline:
            stopped = True
            log(f"  {benchmark.name}: deadline reached, {case.panel} {case.x} and later not run")
            break
        builders = benchmark.setup(case, torch.device(device))
        keep = ["eager"] if scale == "cpu" else providers  # the smoke run: reference only
        if keep is not None:
            builders = {k: v for k, v in builders.items() if k in keep}
        if compile_xs is not None and case.x not in compile_xs:
            builders.pop("compile", None)
        if "compile" in builders:
            torch._dynamo.reset()  # a fresh compile per case: no recompile limits, no reuse
        work = benchmark.work(case)
        row = []
        outputs = {}
        for provider in sorted(builders, key=_provider_order):
            entry = {"panel": case.panel, "x": case.x, "params": case.params, "provider": provider}
            try:
                fn = builders[provider]()
                outputs[provider] = _tensors(fn())  # warm up: compile, autotune, allocate
                ms = time_ms(fn, device, quick)
                peak_mb, extra_mb = peak_memory_mb(fn, device)
            except (
                Exception
            ) as err:  # one provider failing (OOM, unsupported) must not stop the rest
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                oom = isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err)
                entry["error"] = "out of memory" if oom else f"{type(err).__name__}: {err}"[:300]
                row.append(entry)
                continue
            throughput = work / (ms * 1e-3) / (1e9 if benchmark.metric == "GB/s" else 1e12)
            entry.update(
                ms=ms,
                throughput=throughput,
                share_of_peak=throughput / machine.peak(benchmark.metric),
                peak_memory_mb=peak_mb,
                extra_memory_mb=extra_mb,
            )
            row.append(entry)
        ours = next((e for e in row if e["provider"] == "triton" and "ms" in e), None)
        reference = next((p for p in REFERENCES if outputs.get(p)), None)
        for entry in row:
            # How many times faster ours is than this provider (> 1: ours wins).
            entry["triton_speedup"] = entry["ms"] / ours["ms"] if ours and "ms" in entry else None
            mine = outputs.get(entry["provider"])
            if reference and mine and entry["provider"] not in (reference, *BASELINES):
                entry["max_rel_diff"] = _max_rel_diff(mine, outputs[reference])
                entry["compared_with"] = reference
        outputs.clear()
        results.extend(row)
        log(_progress_line(benchmark, case, row))
    record = {
        "benchmark": benchmark.name,
        "title": benchmark.title,
        "description": benchmark.description,
        "metric": benchmark.metric,
        "x_label": benchmark.x_label,
        "scale": scale,
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "device": machine.as_dict(),
        "versions": _versions(),
        "timing": "triton.testing.do_bench, median"
        if machine.kind == "cuda"
        else "perf_counter, median",
        "results": results,
    }
    if stopped:
        record["stopped_at_deadline"] = True
    return record


#: Whose output the others are compared with, first found first.
REFERENCES = ("eager", "torch", "sdpa")
#: Providers that time another computation as a speed baseline (``bf16``: a plain bf16
#: matmul beside a quantized one): their outputs are not compared.
BASELINES = ("bf16",)


def _tensors(out) -> list:
    """The tensors of what a timed function returned (an output, or a tuple of gradients)."""
    import torch

    items = out if isinstance(out, (tuple, list)) else (out,)
    return [t.detach() for t in items if isinstance(t, torch.Tensor)]


def _max_rel_diff(mine: list, theirs: list) -> float | None:
    """``max |a - b| / max |b|`` over paired tensors, in float32; None if they do not pair."""
    if len(mine) != len(theirs) or any(
        a.shape != b.shape for a, b in zip(mine, theirs, strict=True)
    ):
        return None
    worst = 0.0
    for a, b in zip(mine, theirs, strict=True):
        scale = b.float().abs().max().item() or 1.0
        worst = max(worst, (a.float() - b.float()).abs().max().item() / scale)
    return worst


def _provider_order(provider: str) -> tuple[int, str]:
    return (PROVIDERS.index(provider) if provider in PROVIDERS else len(PROVIDERS), provider)


def _progress_line(benchmark: Benchmark, case: Case, row: list[dict]) -> str:
    parts = []
    for e in row:
        value = _number(e["throughput"]) if "throughput" in e else "err"
        parts.append(f"{e['provider']} {value}")
    return (
        f"  {benchmark.name} [{case.panel}] {case.x}: " + ", ".join(parts) + f" {benchmark.metric}"
    )


def _versions() -> dict:
    import torch

    def version(dist):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": version("triton"),
        "llmlab": version("llmlab"),
    }


# --------------------------------------------------------------------------------------------
# Reporting: table, JSON, plot
# --------------------------------------------------------------------------------------------


def format_table(record: dict) -> str:
    """The record as text: one table per panel, throughput per provider, ours vs the others."""
    metric = record["metric"]
    device = record["device"]
    peak = device["peak_copy_gbs"] if metric == "GB/s" else device["peak_matmul_tflops"]
    peak_name = "copy" if metric == "GB/s" else f"{device['matmul_dtype']} matmul"
    lines = [f"{record['title']} on {device['name']}: {metric}, peak {_number(peak)} ({peak_name})"]
    results = record["results"]
    providers = sorted({e["provider"] for e in results}, key=_provider_order)
    others = [p for p in providers if p != "triton"]
    for panel in dict.fromkeys(e["panel"] for e in results):
        rows = [e for e in results if e["panel"] == panel]
        header = [record["x_label"].split(" (")[0]] + providers
        if "triton" in providers:
            header += ["% peak"] + [f"x {p}" for p in others] + ["rel diff"]
        table = [header]
        for x in dict.fromkeys(e["x"] for e in rows):
            by = {e["provider"]: e for e in rows if e["x"] == x}
            cells = [str(x)] + [_cell(by.get(p), "throughput", _number) for p in providers]
            if "triton" in providers:
                cells.append(_cell(by.get("triton"), "share_of_peak", "{:.0%}"))
                cells += [_cell(by.get(p), "triton_speedup", "{:.2f}") for p in others]
                cells.append(_cell(by.get("triton"), "max_rel_diff", "{:.1e}"))
            table.append(cells)
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        lines.append(f"\n[{panel}]")
        for i, r in enumerate(table):
            lines.append("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
    if "triton" in providers and others:
        lines.append("\n'x P': how many times faster triton is than provider P (> 1: ours wins).")
        lines.append(
            "'rel diff': max |triton - reference| / max |reference| over the outputs (the "
            "reference: eager, else a vendor op)."
        )
    return "\n".join(lines)


def _cell(entry: dict | None, key: str, fmt) -> str:
    if entry is None:
        return "-"
    if "error" in entry:
        return "OOM" if entry["error"] == "out of memory" else "err"
    value = entry.get(key)
    if value is None:
        return "-"
    return fmt(value) if callable(fmt) else fmt.format(value)


def _number(value: float) -> str:
    """Three significant digits at most, no exponent for everyday sizes: 2950, 41.3, 0.0123."""
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}" if value >= 0.001 else f"{value:.2e}"


def write(record: dict, out_root: Path) -> tuple[Path, Path]:
    """Write ``<out_root>/<device-slug>/<name>.json`` and ``.png``; return both paths."""
    folder = Path(out_root) / record["device"]["slug"]
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / f"{record['benchmark']}.json"
    json_path.write_text(json.dumps(record, indent=1, default=_json_default) + "\n")
    png_path = folder / f"{record['benchmark']}.png"
    plot(record, png_path)
    return json_path, png_path


def _json_default(value):
    return str(value)


def plot(record: dict, path: Path) -> None:
    """Throughput vs size, one subplot per panel, one line per provider, peak as a dashed line."""
    import matplotlib as mpl
    from matplotlib.figure import Figure

    from llmlab.plotting import COURSE_STYLE, labelled

    results = record["results"]
    panels = list(dict.fromkeys(e["panel"] for e in results))
    providers = sorted({e["provider"] for e in results}, key=_provider_order)
    metric = record["metric"]
    device = record["device"]
    peak = device["peak_copy_gbs"] if metric == "GB/s" else device["peak_matmul_tflops"]
    peak_label = "measured peak (copy)" if metric == "GB/s" else "measured peak (matmul)"
    ncols = min(2, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    with mpl.rc_context(COURSE_STYLE):
        fig = Figure(figsize=(6.0 * ncols, 3.8 * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, panel in zip(axes, panels, strict=False):
            for provider in providers:
                points = sorted(
                    (e["x"], e["throughput"])
                    for e in results
                    if e["panel"] == panel and e["provider"] == provider and "throughput" in e
                )
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(
                        xs,
                        ys,
                        marker="o",
                        label=provider,
                        linewidth=2.5 if provider == "triton" else 1.5,
                    )
            ax.axhline(peak, color="grey", linestyle="--", linewidth=1, label=peak_label)
            ax.set_xscale("log", base=2)
            sizes = sorted({e["x"] for e in results if e["panel"] == panel})
            ax.set_xticks(sizes, [str(x) for x in sizes])
            ax.minorticks_off()
            ax.set_ylim(bottom=0)
            labelled(ax, panel, record["x_label"], metric)
            ax.legend(fontsize=8)
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        fig.suptitle(f"{record['title']} on {device['name']}")
        fig.savefig(path, dpi=110)


# --------------------------------------------------------------------------------------------
# Compiling for a GPU without one
# --------------------------------------------------------------------------------------------

_TRITON_TYPES = {
    "float32": "fp32",
    "float16": "fp16",
    "bfloat16": "bf16",
    "int32": "i32",
    "int64": "i64",
    "int8": "i8",  # int8 codes (kernels.int8_matmul)
    "uint8": "u8",  # packed 4-bit codes (kernels.w4a16)
}


def compile_offline(
    kernel, args, num_warps: int = 4, num_stages: int = 3, arch: int = 90, **constexprs
) -> dict:
    """Compile a Triton kernel for an NVIDIA GPU (default H100, sm_90a) on a machine without one.

    ``kernel`` is a ``TritonKernel`` (or its plain function); ``args`` are example values for
    its non-constexpr parameters in order (CPU tensors stand for pointers of their dtype, ints
    and floats for scalars); ``constexprs`` give every ``tl.constexpr`` parameter. Tensors and
    ints divisible by 16 are marked as such, as Triton does at launch. Returns
    ``{"shared_bytes", "registers", "stack_bytes", "warp_group_mma"}``: stack bytes above zero
    usually mean register spills; ``warp_group_mma`` says Hopper's wgmma was used. Compiling
    proves the GPU path builds (and how big it is), not that it computes the right numbers.
    Uses Triton's compiler API as of Triton 3.x and the ptxas bundled with it.
    """
    import os
    import subprocess
    import tempfile

    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    jit = JITFunction(getattr(kernel, "fn", kernel))
    runtime = [name for name in jit.arg_names if name not in constexprs]
    if len(args) != len(runtime):
        raise ValueError(f"args: expected {len(runtime)} values for {runtime}, got {len(args)}")
    values = dict(zip(runtime, args, strict=True))
    signature, attrs = {}, {}
    for index, name in enumerate(jit.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        value = values[name]
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + _TRITON_TYPES[str(value.dtype).removeprefix("torch.")]
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(
                f"args: {name}: expected a tensor, int or float, got {type(value).__name__}"
            )
    source = ASTSource(fn=jit, signature=signature, constexprs=constexprs, attrs=attrs)
    target = GPUTarget("cuda", arch, 32)
    from llmlab.kernels.launch import _triton_library_for  # tl.max & co. in their GPU form

    with _triton_library_for(interpret=False):
        options = {"num_warps": num_warps, "num_stages": num_stages}
        compiled = triton.compile(source, target=target, options=options)
    registers = stack = None
    cuobjdump = os.path.join(
        os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"
    )
    if os.path.exists(cuobjdump):
        with tempfile.TemporaryDirectory() as tmp:
            cubin = os.path.join(tmp, "kernel.cubin")
            with open(cubin, "wb") as f:
                f.write(compiled.asm["cubin"])
            usage = subprocess.run(
                [cuobjdump, "-res-usage", cubin], capture_output=True, text=True
            ).stdout
        found = re.search(r"REG:(\d+)", usage), re.search(r"STACK:(\d+)", usage)
        registers, stack = (int(m.group(1)) if m else None for m in found)
    return {
        "shared_bytes": compiled.metadata.shared,
        "registers": registers,
        "stack_bytes": stack,
        "warp_group_mma": "warp_group_dot" in compiled.asm.get("ttgir", ""),
    }


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def committed(names: list[str] | tuple[str, ...], root: Path | None = None) -> list[dict]:
    """The committed records of benchmarks ``names`` (``benchmarks/results/<device>/<name>.json``
    of the course checkout, or of ``root``), device by device, in ``names`` order; ``[]`` when
    none was committed (or outside a checkout). Chapters show them with :func:`format_table`."""
    folder = Path(root) if root is not None else default_out_root()
    if not folder.is_dir():
        return []
    records = []
    for device in sorted(p for p in folder.iterdir() if p.is_dir()):
        for name in names:
            path = device / f"{name}.json"
            if path.is_file():
                records.append(json.loads(path.read_text()))
    return records


def default_out_root() -> Path:
    """``benchmarks/results`` of the course checkout (or of the current folder)."""
    from llmlab import course

    root = course.repo_root()
    return (root if root is not None else Path.cwd()) / "benchmarks" / "results"


def _ints(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{flag}: expected comma-separated integers, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llmlab.bench",
        description="Time llmlab's Triton kernels against eager PyTorch, torch.compile and "
        "vendor ops; write JSON and a plot per benchmark.",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="a few sizes, shorter timing")
    parser.add_argument(
        "--out", type=Path, default=None, help="results root (default: benchmarks/results)"
    )
    parser.add_argument(
        "--cpu", action="store_true", help="smoke run on the CPU: tiny sizes, reference only"
    )
    parser.add_argument(
        "--providers",
        default=None,
        help="comma-separated providers to run, e.g. triton,sdpa (default: all)",
    )
    parser.add_argument(
        "--panel", default=None, help="only cases whose panel contains this text, e.g. 'd=128'"
    )
    parser.add_argument(
        "--x", default=None, help="only cases at these comma-separated x values, e.g. 4096,16384"
    )
    parser.add_argument(
        "--compile-x",
        default=None,
        help="run torch.compile only at these comma-separated x values (it costs tens of "
        "seconds per case)",
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)

    benchmarks = registry()
    if args.list:
        for name, b in benchmarks.items():
            print(f"{name:<20} {b.title} ({b.metric})")
        return 0
    unknown = [n for n in args.names if n not in benchmarks]
    if unknown:
        print(
            f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(benchmarks)}",
            file=sys.stderr,
        )
        return 2
    selected = [benchmarks[n] for n in (args.names or benchmarks)]

    import torch

    if args.cpu:
        device, scale = torch.device("cpu"), "cpu"
    elif torch.cuda.is_available():
        device, scale = torch.device("cuda"), ("quick" if args.quick else "full")
    else:
        print(
            "llmlab.bench: the benchmarks time GPU kernels and need a CUDA device; none found.\n"
            "Run them on a GPU machine (e.g. Colab with a GPU runtime), or use --cpu for a smoke\n"
            "run that only checks the harness's plumbing on tiny sizes."
        )
        return 0

    out_root = args.out if args.out is not None else default_out_root()
    print(f"llmlab.bench: measuring {device.type} peaks ...")
    machine = measure_machine(device, quick=scale != "full")
    print(
        f"{machine.name}: copy {machine.peak_gbs:.0f} GB/s, "
        f"{machine.matmul_dtype} matmul {machine.peak_tflops:.1f} TFLOP/s (measured)"
    )
    failed = []
    for benchmark in selected:
        print(f"\n== {benchmark.name}: {benchmark.title}")
        providers = args.providers.split(",") if args.providers else None
        record = run(
            benchmark,
            machine,
            device,
            scale,
            providers=providers,
            panel=args.panel,
            xs=_ints(args.x, "--x"),
            compile_xs=_ints(args.compile_x, "--compile-x"),
        )
        if not record["results"]:
            print(f"no case of {benchmark.name} matches --panel {args.panel!r}")
            continue
        json_path, png_path = write(record, out_root)
        print("\n" + format_table(record))
        print(f"\nwrote {json_path}\n      {png_path}")
        if any(e["provider"] == "triton" and "error" in e for e in record["results"]):
            failed.append(benchmark.name)
    if failed:
        print(
            f"\nour kernel failed in: {', '.join(failed)} (see 'error' in the JSON)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
