"""llmlab.training.sweep: the convergence rule, one size trained to it, and parallel == serial."""

import pytest

from llmlab.data.packing import write_token_file
from llmlab.training.sweep import SizeJob, improvement, run_sweep, train_until_converged


def test_improvement_interpolates_the_loss_three_quarters_back():
    assert improvement([100, 200, 300, 400], [4.0, 3.0, 2.0, 1.9]) == pytest.approx(
        (2.0 - 1.9) / 2.0
    )
    # 0.75 * 200 = 150 lies between the points: 3.5
    assert improvement([100, 200], [4.0, 3.0]) == pytest.approx((3.5 - 3.0) / 3.5)
    assert improvement([100], [4.0]) == 0.0
    with pytest.raises(ValueError, match="eval_steps"):
        improvement([], [])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import random

    folder = tmp_path_factory.mktemp("sweep")
    rng = random.Random(0)
    docs = [bytes(rng.choice(b"abcab ") for _ in range(200)) for _ in range(40)]
    train = write_token_file(folder / "train.bin", docs[:30], 256, 257)
    val = write_token_file(folder / "val.bin", docs[30:], 256, 257)
    return str(train), str(val)


def _job(files, d=8, **kw):
    settings = dict(seq=16, batch=4, warmup_steps=1, check_steps=3, min_checks=2, max_steps=12,
                    eval_windows=4, converged=0.5, patience=1)  # fmt: skip
    settings.update(kw)
    return SizeJob((d, 1, 2), *files, vocab_size=257, **settings)


def test_a_loose_rule_stops_at_the_first_eligible_check(files):
    r = train_until_converged(_job(files))
    assert r["converged"] and r["steps"] == 6  # min_checks=2 checks of 3 steps
    assert r["N"] + 257 * 8 + 16 * 8 == r["total"]
    assert len(r["val"]) == len(r["tokens"]) == 2 and r["tokens"][-1] == 6 * 4 * 16


def test_a_strict_rule_runs_to_the_cap(files):
    r = train_until_converged(_job(files, converged=1e-9, patience=3))
    assert not r["converged"] and r["steps"] == 12


def test_parallel_workers_give_the_serial_results(files):
    jobs = [_job(files, d=8), _job(files, d=12)]
    serial = run_sweep(jobs, workers=1, report=None)
    parallel = run_sweep(jobs, workers=2, report=None)
    for a, b in zip(serial, parallel, strict=True):
        assert a["val"] == b["val"] and a["steps"] == b["steps"] and a["size"] == b["size"]


def test_bad_settings_name_the_argument(files):
    with pytest.raises(ValueError, match="converged"):
        _job(files, converged=2.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        _job(files, warmup_steps=12)
    with pytest.raises(TypeError, match="jobs"):
        run_sweep([])
