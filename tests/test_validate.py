"""freqlens validate: the three checks pass on the instrument as it is, and fail -- each one --
when the model has no spectral bias (lookup-table control) or the instrument is broken."""

import dataclasses
import json

import numpy as np
import pytest
import scipy.fft

from freqlens import validate as validation
from freqlens.cli import main
from freqlens.spectral import EigenBasis, FilterBank

KEYS = {"name", "title", "reproduces", "reference", "model", "settings", "metric", "threshold", "passed",
        "seconds"}


def _read(out):
    return json.loads((out / "validation.json").read_text())


def test_quick_validate_passes_and_writes_json_and_figure(tmp_path, capsys):
    out = tmp_path / "validate"
    assert main(["validate", "--out", str(out), "--quick"]) == 0
    results = _read(out)
    assert results["passed"] and results["quick"] and not results["control"]
    assert list(results["checks"]) == ["fp_1d", "digits_filtering", "planted_modes"]
    for check in results["checks"].values():
        assert KEYS <= set(check), check["name"]
        assert check["passed"] is True
        assert "arXiv" in check["reference"]
    a, b, c = results["checks"].values()
    assert a["spearman_rho"] >= 0.9
    assert all(low > validation.TIE for low in b["interval_low"])
    assert len(b["widths"]) == len(b["interval_low"]) == 4
    assert b["neighbours"][0] > 10 * b["neighbours"][-1]  # the widths resolve: a wide span of filters
    assert c["recovery"][str(c["probe_size"])]["rate"] >= 0.95
    assert c["min_reliable_probe_size"] == min(c["sizes"])  # every swept size recovers in quick mode
    assert (out / "validation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert len(lines) == 3 and all(line.startswith("PASS") for line in lines)


def test_lookup_control_fails_every_check_and_the_cli_exits_1(tmp_path, capsys):
    """A lookup table (one free output per input) has no spectral bias: every frequency is
    learned at once, and a check that still passed would not be measuring anything."""
    out = tmp_path / "control"
    assert main(["validate", "--out", str(out), "--quick", "--control"]) == 1
    results = _read(out)
    assert results["control"] and not results["passed"]
    for check in results["checks"].values():
        assert check["model"] == "lookup"
        assert check["passed"] is False, check["name"]
    a, b, c = results["checks"].values()
    assert a["spearman_rho"] is None  # every frequency converges at the same step
    assert np.allclose(b["difference"], 0.0, atol=validation.TIE)
    assert c["recovery_rate"] == 0.0 and set(c["ground_truth"]) == {"tie"}
    output = capsys.readouterr().out
    lines = [line for line in output.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert len(lines) == 3 and all(line.startswith("FAIL ") for line in lines)
    assert "a check FAILED" in output


def test_fp_1d_fails_when_the_transform_loses_the_sample_positions(monkeypatch):
    """A broken instrument: the cosine transform evaluated at shuffled positions."""
    original = validation.cosine_errors
    shuffled = lambda x, *args: original(np.random.default_rng(0).permutation(x), *args)  # noqa: E731
    monkeypatch.setattr(validation, "cosine_errors", shuffled)
    result = validation.check_fp_1d(quick=True)
    assert result["passed"] is False
    assert result["spearman_rho"] is None or result["spearman_rho"] < 0.9


def test_digits_filtering_fails_when_the_kernel_rows_do_not_match_the_outputs(monkeypatch):
    """A broken instrument: the filters built over the probe inputs in another order than the
    recorded outputs (a misaligned recording)."""

    def misaligned(inputs, widths, **options):
        return FilterBank(np.asarray(inputs)[np.random.default_rng(0).permutation(len(inputs))], widths, **options)

    monkeypatch.setattr(validation, "FilterBank", misaligned)
    result = validation.check_digits_filtering(quick=True, resamples=50)
    assert result["passed"] is False
    assert min(result["difference"]) < validation.TIE


def test_planted_modes_fails_when_the_band_order_is_reversed(monkeypatch):
    """A broken instrument: the probe basis' modes in ascending order of eigenvalue, roughest
    first (what ``scipy.linalg.eigh`` returns before it is reversed)."""
    original = EigenBasis.band_errors

    def ascending(self, *args, **kwargs):
        flipped = dataclasses.replace(self, modes=self.modes[:, ::-1], eigenvalues=self.eigenvalues[::-1])
        return original(flipped, *args, **kwargs)

    monkeypatch.setattr(EigenBasis, "band_errors", ascending)
    result = validation.check_planted_modes(quick=True, seeds=3, sizes=(64,))
    assert result["passed"] is False
    assert result["recovery_rate"] == 0.0
    assert set(result["ground_truth"]) == {"low"}  # the truth does not use the probe bands


def test_cosine_errors_match_scipy_dct():
    """The 1-D instrument against an independent reference: scipy's DCT-II on the midpoints."""
    rng = np.random.default_rng(1)
    n, ks = 64, np.array([1, 2, 5, 9])
    x = (np.arange(n) + 0.5) * np.pi / n
    y = np.cos(np.outer(ks, x)).sum(axis=0) + 0.1 * rng.normal(size=n)
    outputs = y + rng.normal(size=(3, n))
    expected = np.abs(scipy.fft.dct(outputs - y, type=2, axis=1)[:, ks]) / np.abs(scipy.fft.dct(y, type=2)[ks])
    np.testing.assert_allclose(validation.cosine_errors(x, outputs, y, ks), expected, rtol=1e-10)


def test_digits_check_is_deterministic():
    first = validation.check_digits_filtering(quick=True, resamples=20)
    second = validation.check_digits_filtering(quick=True, resamples=20)
    assert first["difference"] == second["difference"] and first["interval_low"] == second["interval_low"]


def test_out_that_is_a_file_is_refused_naming_the_flag(tmp_path, capsys):
    path = tmp_path / "taken"
    path.write_text("x")
    assert main(["validate", "--out", str(path), "--quick"]) == 2
    error = capsys.readouterr().err
    assert "--out" in error and str(path) in error and "directory" in error
    assert path.read_text() == "x"
    with pytest.raises(ValueError, match="`out`"):
        validation.validate(path, quick=True)


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="`model`"):
        validation.check_fp_1d(quick=True, model="linear")


@pytest.mark.parametrize("out", ["", "taken/sub"])
def test_an_out_that_cannot_hold_the_results_is_refused_before_any_check_runs(tmp_path, capsys, monkeypatch, out):
    (tmp_path / "taken").write_text("x")  # a file where a parent directory is needed
    monkeypatch.chdir(tmp_path)
    ran = []
    monkeypatch.setattr(validation, "check_fp_1d", lambda **kwargs: ran.append(1))
    assert main(["validate", "--out", out, "--quick"]) == 2
    assert "--out" in capsys.readouterr().err and not ran
    with pytest.raises(ValueError, match="`out`"):
        validation.validate(out, quick=True)
    assert not ran
