"""A new user's first contact: a model that cannot run here, maps of nothing, doctor.

``hpcxt fit`` evaluates the configured model once in a child process before
any rank fits: a model that returns zeros (xsapec without AtomDB) or takes
its process down (xsmeka, a segmentation fault) is refused with one line
naming ``fit.model``, exit status 2, and no results.h5. ``hpcxt maps``
refuses a results file without one successful fit. ``hpcxt doctor`` says
which models are usable and fails when the one that counts is not.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import run_hpcxt
from fit_fixtures import make_fit_workdir
from hpcxt.models import check_model
from hpcxt.io.checkpoint import read_results

APEC = "xsphabs*xsapec"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Bundle, region table and config (xsphabs*xsbremss, 36 regions); no fit yet."""
    return make_fit_workdir(tmp_path_factory.mktemp("first_contact"), errors="covar",
                            checkpoint_seconds=0.0, batch_size=4)


@pytest.fixture(scope="module")
def apec_unusable():
    if check_model(APEC).usable:
        pytest.skip("xsapec evaluates here (AtomDB is installed)")


def workdir(inputs: Path, dst: Path, model: str | None = None) -> Path:
    shutil.copytree(inputs.parent, dst)
    cfg = dst / "config.yaml"
    if model:
        cfg.write_text(cfg.read_text().replace("model: xsphabs*xsbremss", f"model: {model}"))
    return cfg


def error_lines(proc) -> list[str]:
    return [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]


def assert_refused_before_the_fit(proc, cfg: Path, what: str):
    assert proc.returncode == 2, proc.stderr
    errors = error_lines(proc)
    assert len(errors) == 1, proc.stderr
    line = errors[0]
    assert line.startswith(f"hpcxt: error: {cfg}: fit.model: "), line
    assert what in line, line
    assert "point fit.apec_root at AtomDB" in line and "CIAO's Sherpa" in line
    assert "xsphabs*xsbremss" in line
    assert "Traceback" not in proc.stderr
    assert not (cfg.parent / "work" / "fit" / "results.h5").exists()
    assert not (cfg.parent / "work" / "fit" / "model_check.json").exists()


def test_model_of_zeros_is_refused_before_the_fit(inputs, apec_unusable, tmp_path):
    cfg = workdir(inputs, tmp_path / "w", model=APEC)
    proc = run_hpcxt("fit", cfg, timeout=120)
    assert_refused_before_the_fit(proc, cfg, f"{APEC} evaluates to zero here")


@pytest.mark.mpi
def test_model_of_zeros_is_refused_on_every_rank(inputs, apec_unusable, tmp_path):
    cfg = workdir(inputs, tmp_path / "w", model=APEC)
    proc = run_hpcxt("fit", cfg, nprocs=3, timeout=120)
    assert_refused_before_the_fit(proc, cfg, f"{APEC} evaluates to zero here")
    assert "fit: 36 regions" not in proc.stderr   # no rank started fitting


def test_model_that_ends_its_process_is_refused(inputs, tmp_path):
    """The check's child evaluates xsmeka, which XSPEC's fatal error ends (status 0)."""
    if check_model("xsphabs*xsmeka").usable:
        pytest.skip("xsmeka evaluates here (XSPEC's model data are installed)")
    cfg = workdir(inputs, tmp_path / "w", model=APEC)
    proc = run_hpcxt("fit", cfg, faults={"model_probe": "xsphabs*xsmeka"}, timeout=120)
    assert_refused_before_the_fit(proc, cfg, f"{APEC} ended the process that evaluated it "
                                  "without a result")


@pytest.mark.mpi
def test_model_that_segfaults_is_refused_on_every_rank(inputs, tmp_path):
    cfg = workdir(inputs, tmp_path / "w", model=APEC)
    proc = run_hpcxt("fit", cfg, nprocs=3, faults={"model_probe": "segfault"}, timeout=120)
    assert_refused_before_the_fit(proc, cfg, f"{APEC} crashed the process that evaluated "
                                  "it (signal 11, SIGSEGV)")


def test_usable_verdict_is_kept_for_the_resume_and_only_for_it(inputs, tmp_path):
    cfg = workdir(inputs, tmp_path / "w")
    check = cfg.parent / "work" / "fit" / "model_check.json"
    # killed after its second checkpoint: the check ran and was kept
    proc = run_hpcxt("fit", cfg, faults={"kill_after_checkpoint": 2}, timeout=120)
    assert proc.returncode != 0 and check.exists()
    # the resume does not check again: a probe that would crash is never run
    proc = run_hpcxt("fit", cfg, "--resume", faults={"model_probe": "segfault"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert read_results(cfg.parent / "work" / "fit" / "results.h5").complete
    # without the kept verdict the model is checked again (and here refused)
    check.unlink()
    (cfg.parent / "work" / "fit" / "results.h5").unlink()
    proc = run_hpcxt("fit", cfg, faults={"model_probe": "segfault"}, timeout=120)
    assert proc.returncode == 2
    assert "fit.model: xsphabs*xsbremss crashed the process" in proc.stderr
    assert not check.exists()


def test_maps_refuse_results_without_a_successful_fit(inputs, tmp_path):
    cfg = workdir(inputs, tmp_path / "w")
    proc = run_hpcxt("fit", cfg, faults={"fail_regions": list(range(36))}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    proc = run_hpcxt("maps", cfg, timeout=120)
    assert proc.returncode == 2
    results = cfg.parent / "work" / "fit" / "results.h5"
    assert proc.stderr.strip().splitlines() == [
        f"hpcxt: error: {results}: status: holds no successful fit (36 failed, 0 pending; "
        "most common failure: RuntimeError: injected failure for region N (test hook)): "
        "no maps written; see 'hpcxt status'"]
    assert not (cfg.parent / "work" / "maps").exists()


def test_doctor_names_the_usable_models_and_fails_when_the_default_is_not(inputs,
                                                                          apec_unusable):
    proc = run_hpcxt("doctor", timeout=120)
    assert proc.returncode == 1, proc.stdout
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith(f"the default model {APEC} is NOT usable here: "
                                "point fit.apec_root at AtomDB")
    assert lines[-1].endswith("models usable here: xsphabs*xsbremss")
    assert not any("everything hpcxt needs is usable" in ln for ln in lines)
    # with a config whose model evaluates, that model decides
    proc = run_hpcxt("doctor", inputs, timeout=120)
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == (
        f"fit.model xsphabs*xsbremss of {inputs} is usable here; "
        "models usable here: xsphabs*xsbremss")
