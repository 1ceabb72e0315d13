"""The columns experiment's claim-B rules (Amendment 2 in experiments/alexnet_columns_cifar10.py) and its report,
against independent references: exact enumeration of the column splits, scipy's Stouffer, the Beta law of a
random kernel's colour score, the t-interval, and kernels built to show (or not) a colour split."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "alexnet_columns_cifar10.py"
stats = pytest.importorskip("scipy.stats")


@pytest.fixture(scope="module")
def cols():
    spec = importlib.util.spec_from_file_location("alexnet_columns_cifar10", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _score(k_NHWC) -> np.ndarray:
    """Colour specificity written out independently: the mean-removed kernel's energy off the per-pixel grey
    axis (projection onto the orthogonal complement of (1, 1, 1)/sqrt(3)) over its whole energy."""
    w = np.asarray(k_NHWC, np.float64)
    w = w - w.mean(axis=(1, 2, 3), keepdims=True)
    u = np.ones(w.shape[-1]) / math.sqrt(w.shape[-1])
    off = w - (w @ u)[..., None] * u
    return (off ** 2).sum(axis=(1, 2, 3)) / (w ** 2).sum(axis=(1, 2, 3))


def _kernels(kind: str, n: int, rng) -> np.ndarray:
    """n 5x5x3 kernels: grey (the same pattern in R, G and B, a little colour noise), opponent (R - G), or
    random (i.i.d. normal, as at initialisation)."""
    g = rng.standard_normal((n, 5, 5))
    noise = rng.standard_normal((n, 5, 5, 3))
    if kind == "grey":
        return np.stack([g, g, g], -1) + 0.3 * noise
    if kind == "opponent":
        return np.stack([g, -g, np.zeros_like(g)], -1) + 0.3 * noise
    return noise


def _row(seed: int, c0, c1, model: str = "alexnet", err: float = 30.0) -> dict:
    return {"model": model, "seed": seed, "width": 0.25, "dtype": "float32", "val_error": err, "test_error": err,
            "wall_seconds": 1.0, "conv1_per_kernel": [_score(c0).tolist(), _score(c1).tolist()],
            "conv1_per_column": [float(_score(c0).mean()), float(_score(c1).mean())],
            "conv1_kernel_shape": [5, 5, 3], "settings": {"schedule": "fixed", "epochs": 6.0},
            "workdir": f"main/{model}_seed{seed}"}


def test_permutation_p_matches_exact_enumeration(cols):
    """Monte Carlo p of the two-sided test = the share of all C(10, 5) splits at least as far apart."""
    rng = np.random.default_rng(7)
    a, b = rng.uniform(0.4, 0.9, 5), rng.uniform(0.3, 0.8, 5)
    x = np.concatenate([a, b])
    obs = abs(a.mean() - b.mean())
    splits = list(itertools.combinations(range(10), 5))
    exact = sum(abs(x[list(s)].mean() - np.delete(x, s).mean()) >= obs - 1e-12 for s in splits) / len(splits)
    B = 40_000
    got = cols.permutation_test(a, b, permutations=B, seed=3)
    assert abs(got["p"] - exact) < 4 * math.sqrt(exact * (1 - exact) / B) + 1 / B
    assert got["delta"] == pytest.approx(a.mean() - b.mean(), abs=1e-12)
    med = np.median([abs(x[list(s)].mean() - np.delete(x, s).mean()) for s in splits])
    assert got["null_median_abs_delta"] == pytest.approx(med, abs=0.02)
    assert got["separates"] == (obs > med)


def test_permutation_test_ignores_the_column_order(cols):
    rng = np.random.default_rng(1)
    a, b = rng.uniform(size=12), rng.uniform(size=12)
    ab, ba = cols.permutation_test(a, b, 5000, 0), cols.permutation_test(b, a, 5000, 0)
    assert ab["p"] == ba["p"] and ab["separates"] == ba["separates"]
    assert ab["delta"] == pytest.approx(-ba["delta"], abs=1e-12)


def test_stouffer_matches_scipy(cols):
    ps = [0.01, 0.3, 0.6, 0.2, 0.9]
    z, p = cols.stouffer(ps, permutations=10**6)
    ref = stats.combine_pvalues(ps, method="stouffer")
    assert z == pytest.approx(ref.statistic, rel=1e-9) and p == pytest.approx(ref.pvalue, rel=1e-9)


def test_random_kernel_baseline_follows_the_beta_law(cols):
    """An i.i.d. normal 5x5x3 kernel, mean removed, has 74 free directions, 50 of them off the grey axis: its
    score is Beta(25, 12) (mean 50/74 = 0.676).  The mean of 12 such scores: from scipy's Beta sampler."""
    r = cols.random_kernel_baseline(12)
    assert r["kernels"] == 240_000 and r["group_size"] == 12
    beta = stats.beta(25, 12)
    assert abs(r["per_kernel_mean"] - beta.mean()) < 4 * beta.std() / math.sqrt(r["kernels"])
    np.testing.assert_allclose(r["per_kernel_95"], beta.ppf([0.025, 0.975]), atol=0.003)
    means = beta.rvs(size=(200_000, 12), random_state=np.random.default_rng(99)).mean(axis=1)
    np.testing.assert_allclose(r["group_mean_95"], np.quantile(means, [0.025, 0.975]), atol=0.002)


def test_a_colour_split_between_columns_supports(cols, tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for s in range(5):   # which column turned grey varies with the seed, as in the paper
        grey, colour = _kernels("grey", 12, rng), _kernels("opponent", 12, rng)
        rows.append(_row(s, *((grey, colour) if s % 2 else (colour, grey))))
    b = cols.colour_test(rows, tmp_path, permutations=2000)
    assert all(q["p"] == 1 / 2001 and q["separates"] for q in b["per_seed"])
    assert b["combined_p"] < 1e-6 and b["gate"]["passes"] and b["verdict"] == "supports"
    assert all(sorted(q["vs_random"]) == ["above", "below"] for q in b["per_seed"])


def test_columns_from_one_random_distribution_cannot_decide(cols, tmp_path):
    rng = np.random.default_rng(0)
    rows = [_row(s, _kernels("random", 12, rng), _kernels("random", 12, rng)) for s in range(9)]
    b = cols.colour_test(rows, tmp_path, permutations=2000)
    assert b["combined_p"] > 0.05 and not b["gate"]["passes"] and b["verdict"] == "cannot decide"


def test_learned_grey_kernels_without_a_split_contradict(cols, tmp_path):
    """conv1 learned (greyer than random kernels in every column), the columns' scores the same multiset
    (column 1 = column 0 with its colour channels rotated, which leaves each score unchanged)."""
    rng = np.random.default_rng(0)
    rows = []
    for s in range(9):
        k = _kernels("grey", 12, rng)
        rows.append(_row(s, k, k[..., [1, 2, 0]]))
    b = cols.colour_test(rows, tmp_path, permutations=2000)
    assert all(q["vs_random"] == ["below", "below"] and not q["separates"] for q in b["per_seed"])
    assert b["gate"]["passes"] and b["verdict"] == "contradicts"


def test_verdict_needs_most_seeds_to_separate(cols):
    """Four seeds far apart carry Stouffer's Z past 5%, but five of nine lie in the null's central half: the
    rule does not let a minority of seeds decide."""
    ps = [1e-5] * 4 + [0.7] * 5
    per_seed = [{"p": p, "separates": p < 0.5} for p in ps]
    _, combined = cols.stouffer(ps)
    assert combined < 0.05
    assert cols.verdict_b(per_seed, combined, gate=False) == "cannot decide"
    assert cols.verdict_b(per_seed, combined, gate=True) == "contradicts"
    ps = [0.2] * 9   # no single seed below 5%, every seed apart: together they decide
    _, combined = cols.stouffer(ps)
    assert combined < 0.05 and cols.verdict_b([{"p": p, "separates": True} for p in ps], combined, False) == \
        "supports"


def test_seed_rule_gives_nine_for_the_pilot_sd(cols):
    pilot = json.loads((ROOT / "experiments" / "results" / "alexnet_columns_cifar10_cpu" / "pilot.json").read_text())
    sd = pilot["sd"]
    half = [stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) for n in (8, 9)]
    assert half[0] > 0.85 >= half[1]
    assert cols.seeds_needed(sd, 10) == 9 and cols.seeds_needed(sd, 4) == 4


def test_report_from_finished_runs(cols, tmp_path):
    """`report` on finished rows alone (no data, no checkpoints): claim A's interval is Student's t over the
    paired seeds; claim B's per-seed table and the first rule beside it; the summary copied on --publish."""
    rng = np.random.default_rng(3)
    out = tmp_path / "cols"
    (out / "main").mkdir(parents=True)
    errs = {"alexnet": [35.1, 35.3, 34.9], "alexnet_half": [38.0, 37.9, 37.9], "alexnet_owt": [36.0, 36.5, 35.0]}
    for net, es in errs.items():
        for s, e in enumerate(es):
            row = _row(s, _kernels("grey", 12, rng), _kernels("opponent", 12, rng), model=net, err=e)
            (out / "main" / f"{net}_seed{s}.json").write_text(json.dumps(row))
    (out / "pilot.json").write_text(json.dumps({"sd": 1.0748023074035644}))
    assert cols.main(["report", "--out", str(out), "--permutations", "2000"]) == 0
    res = json.loads((out / "report.json").read_text())
    d = np.array(errs["alexnet_half"]) - np.array(errs["alexnet"])
    lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    a = res["claim_A"]
    assert a["mean"] == pytest.approx(d.mean()) and a["ci95"] == pytest.approx([lo, hi])
    assert [q["d"] for q in a["per_seed"]] == pytest.approx(d.tolist()) and a["verdict"] == "supports"
    assert a["seeds_rule"] == {"pilot_sd": 1.0748023074035644, "max_seeds": 10, "n": 9, "ran": 3}
    b = res["claim_B"]
    assert b["verdict"] == "supports" and [q["seed"] for q in b["per_seed"]] == [0, 1, 2]
    assert all("init" not in q for q in b["per_seed"])          # no workdirs: no initial net to rebuild
    assert res["claim_B_first_rule"]["group_size"] == 12
    md = (out / "report.md").read_text()
    assert "fewer than the rule asks" in md and "Stouffer Z" in md and "Gate" in md


def test_report_of_the_two_column_net_alone_tests_claim_b_only(cols, tmp_path):
    """The width-0.5 point trains the two-column net alone: claim A is reported as not tested (there is no
    one-GPU net to pair with), never as a verdict, and claim B is decided over the seeds there are (n = 2: both
    must separate)."""
    rng = np.random.default_rng(4)
    out = tmp_path / "w05"
    (out / "main").mkdir(parents=True)
    for s in (0, 1):
        row = _row(s, _kernels("grey", 24, rng), _kernels("opponent", 24, rng))
        (out / "main" / f"alexnet_seed{s}.json").write_text(json.dumps(row))
    assert cols.main(["report", "--out", str(out), "--permutations", "2000"]) == 0
    res = json.loads((out / "report.json").read_text())
    assert res["claim_A"]["verdict"].startswith("not tested") and "ci95" not in res["claim_A"]
    assert res["claim_B"]["verdict"] == "supports" and [q["seed"] for q in res["claim_B"]["per_seed"]] == [0, 1]
    assert "Claim A: not tested" in (out / "report.md").read_text()


def test_bad_report_input_is_one_error_line(cols, tmp_path, capsys):
    assert cols.main(["report", "--out", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.startswith("error: no finished runs")
    assert cols.main(["main", "--schedule", "recipe", "--lr", "0.1"]) == 2
    assert "drop --lr" in capsys.readouterr().err


@pytest.mark.slow
def test_initial_net_is_the_seed_matched_trainer_init(cols, tmp_path):
    """The init baseline rebuilds a run's net from its config.json: the same kernels as the model its seed
    draws (scored here by the independent formula).  Slow: two compilations of the whole net's init."""
    from alexnet_jax.configs import get_config
    from alexnet_jax.trainer import build_model

    cfg = get_config("alexnet_cifar10").replace(width=0.25, seed=5, mesh_model=1)
    (tmp_path / "config.json").write_text(cfg.to_json())
    per_kernel, shape = cols.init_scores(tmp_path)
    assert shape == [5, 5, 3] and [len(c) for c in per_kernel] == [12, 12]
    k = np.asarray(build_model(cfg).conv1.kernel[...], np.float64)    # (columns, H, W, I, O)
    for c in range(2):
        np.testing.assert_allclose(per_kernel[c], _score(np.moveaxis(k[c], -1, 0)), atol=1e-6)
    assert cols.init_scores(tmp_path / "absent") is None


SHARED_CIFAR = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10_train_jpeg.tar.gz"


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason=f"the CIFAR-10 tarball is not at {SHARED_CIFAR}")
def test_columns_script_end_to_end_at_tiny_size(tmp_path):
    """pilot -> main (reusing the pilot's runs) -> report with 2 seeds of 3 steps each, two jobs at a time."""
    out = tmp_path / "cols"
    env = dict(os.environ, JAX_PLATFORMS="cpu", TFDS_DATA_DIR=str(tmp_path / "tfds"))
    common = [sys.executable, str(SCRIPT), "--out", str(out), "--width", "0.125", "--epochs", "0.01",
              "--nets", "alexnet,alexnet_half", "--jobs", "2"]
    for phase in (["pilot", "--seeds", "0,1"], ["main", "--seeds", "0,1"], ["report", "--permutations", "2000"]):
        r = subprocess.run(common + phase, capture_output=True, text=True, timeout=1500, env=env, cwd=ROOT)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads((out / "report.json").read_text())
    assert len(res["claim_A"]["per_seed"]) == 2 and res["claim_A"]["seeds_rule"]["ran"] == 2
    b = res["claim_B"]
    assert [q["seed"] for q in b["per_seed"]] == [0, 1] and all("init" in q for q in b["per_seed"])
    assert b["kernels_per_column"] == 6 and b["verdict"] in ("supports", "cannot decide", "contradicts")
    assert (out / "filters_clearest_seed.png").exists() and (out / "curves.png").exists()
