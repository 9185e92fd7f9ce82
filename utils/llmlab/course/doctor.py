"""The doctor: what this machine has and what the course still needs.

    >>> from llmlab.course.doctor import doctor
    >>> doctor()                     # also: python -m llmlab doctor

It prints one line per fact (versions, device, kernels, assets, network mode) and, for each
missing thing the course needs, the one command that fixes it.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

from llmlab import env

#: Distributions the course cannot run without, and the one line that installs them.
REQUIRED_PACKAGES = (
    "torch",
    "numpy",
    "transformers",
    "tokenizers",
    "safetensors",
    "gguf",
    "accelerate",
    "matplotlib",
    "tqdm",
    "nbformat",
)
#: Distributions that some chapters use; their absence is reported, not fatal.
OPTIONAL_PACKAGES = (
    "triton",
    "bitsandbytes",
    "sentence-transformers",
    "ipywidgets",
    "jupyterlab",
    "papermill",
    "nbval",
)
MIN_PYTHON = (3, 11)  # pyproject.toml's requires-python (a test keeps them equal)
_FIX_INSTALL = "make lab   (or: pip install -r requirements.lock && pip install -e .)"


@dataclass
class Finding:
    """One line of the doctor's report."""

    topic: str
    value: str
    ok: bool = True
    required: bool = True
    fix: str = ""

    def line(self) -> str:
        mark = "ok " if self.ok else ("ERR" if self.required else "-- ")
        text = f"[{mark}] {self.topic:<22} {self.value}"
        if not self.ok and self.fix:
            text += f"\n      fix: {self.fix}"
        return text


@dataclass
class Report:
    """The doctor's findings; ``ok`` is False when something the course needs is missing."""

    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.ok or not f.required for f in self.findings)

    def add(self, *args, **kwargs) -> Finding:
        finding = Finding(*args, **kwargs)
        self.findings.append(finding)
        return finding

    def __str__(self) -> str:
        verdict = (
            "Everything the course needs is here."
            if self.ok
            else "Something the course needs is missing: run the fix above."
        )
        return "\n".join([f.line() for f in self.findings] + [verdict])

    def _repr_pretty_(self, printer, cycle) -> None:  # IPython shows the report, not a repr
        printer.text(str(self))


def locked_versions() -> dict[str, str]:
    """``{distribution: version}`` from the checkout's requirements.lock (empty when absent)."""
    from llmlab import course

    root = course.repo_root()
    lock = root / "requirements.lock" if root else None
    if lock is None or not lock.is_file():
        return {}
    return course.read_requirements(lock)


def short_path(path: str | os.PathLike[str]) -> str:
    """``path`` as a reader can share it: relative to the course checkout when inside it,
    ``~/...`` under the home folder, else as it is (``/usr/bin/python3`` names no person)."""
    from llmlab import course

    full = Path(path).expanduser().absolute()
    root = course.repo_root()
    if root is not None and full.is_relative_to(root.absolute()):
        return full.relative_to(root.absolute()).as_posix() or "."
    home = Path.home().absolute()
    if full.is_relative_to(home):
        return "~/" + full.relative_to(home).as_posix()
    return str(full)


def doctor(check_assets: bool = True) -> Report:
    """Inspect this machine and return a :class:`Report` (print it to read it)."""
    report = Report()
    py = sys.version_info
    report.add(
        "python",
        f"{platform.python_version()} ({short_path(sys.executable)})",
        ok=py[:2] >= MIN_PYTHON,
        fix=f"install Python >= {'.'.join(map(str, MIN_PYTHON))}",
    )
    _check_packages(report)
    if env.package_version("torch") is not None:
        _check_device(report)
        _check_kernels(report)
    if check_assets:
        _check_assets(report)
    _check_network_mode(report)
    return report


def _check_packages(report: Report) -> None:
    locked = locked_versions()
    for dist in REQUIRED_PACKAGES + OPTIONAL_PACKAGES:
        required = dist in REQUIRED_PACKAGES
        version = env.package_version(dist)
        want = locked.get(dist)
        if version is None:
            report.add(dist, "not installed", ok=False, required=required, fix=_FIX_INSTALL)
            continue
        value = version
        if want and version.split("+")[0] != want:
            value += f"  (requirements.lock pins {want}: results may differ from the course's)"
        report.add(dist, value, required=required)


def _check_device(report: Report) -> None:
    import torch

    try:
        device = env.pick_device()
    except ValueError as err:
        report.add("device", str(err), ok=False, fix=f"unset {env.DEVICE_ENV} or set it to cpu")
        return
    if device.type == "cuda":
        index = device.index or 0
        props = torch.cuda.get_device_properties(index)
        detail = f"cuda ({props.name}, {props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor})"
    elif device.type == "mps":
        detail = "mps (Apple GPU)"
    else:
        detail = f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    report.add("device", detail)


def _check_kernels(report: Report) -> None:
    from llmlab import kernels

    mode = kernels.backend()
    report.add("triton kernels", f"{mode.name}: {mode.reason}", required=False)
    registered = kernels.load_all()
    if not registered:
        report.add("kernels", "none found in llmlab.kernels", required=False)
    for name in sorted(registered):
        report.add(f"kernel {name}", mode.describe(name), required=False)


def _check_assets(report: Report) -> None:
    from llmlab import assets

    for asset in assets.ASSETS.values():
        where = assets.cached_path(asset.key)
        report.add(
            f"asset {asset.key}",
            f"ready at {short_path(where)}" if where else f"missing ({asset.title})",
            ok=where is not None,
            fix="python -m llmlab assets fetch",
        )


def _check_network_mode(report: Report) -> None:
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
    source = os.environ.get("LLMLAB_MODEL_SOURCE", "pypi")
    if offline:
        value = "offline (HF_HUB_OFFLINE=1): models load from the PyPI wheels' cache"
    else:
        value = f"hub allowed (HF_HUB_OFFLINE unset); models load from: {source}"
    report.add("network", value, required=False)
