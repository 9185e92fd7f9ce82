"""tools/study_gptq_awq_models.py: the record chapter 05's notebook 5 reads (smoke run)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "study_gptq_awq_models.py"


def _tool():
    spec = importlib.util.spec_from_file_location("study_gptq_awq_models", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_smoke_study_writes_every_field_the_notebook_reads(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path / "cache"))
    tool = _tool()
    out = tmp_path / "study.json"
    assert tool.main(["--smoke", "--out", str(out)]) == 0
    study = json.loads(out.read_text())
    assert not list(tmp_path.glob("*.tmp"))  # written atomically: no temporary file left
    for key in ("command", "date", "machine", "protocol", "seconds", "variants"):
        assert key in study, key
    assert [v["variant"] for v in study["variants"]] == list(tool.VARIANTS)
    for v in study["variants"]:
        for key in ("parameters", "train_seconds", "fp32_perplexity", "loudness_median",
                    "loudness_max", "seconds"):  # fmt: skip
            assert isinstance(v[key], (int, float)), key
        assert v["loudness_max"] >= v["loudness_median"] >= 1.0
        four = v["bits"]["4"]
        assert isinstance(four["rtn_gap_nats"], float)
        assert list(four["closed"]) == ["GPTQ", "GPTQ act-order", "AWQ"]
        for cell in four["closed"].values():
            assert cell["low"] <= cell["high"] and isinstance(cell["share"], float)
    wide = [v for v in study["variants"] if "d_model" in v["changes"]]  # 128 in the smoke run
    narrow = [v for v in study["variants"] if "d_model" not in v["changes"]]
    assert len(wide) == len(narrow) == 2
    assert wide[0]["parameters"] > narrow[0]["parameters"]
