"""Config loading: every problem named by its field, all at once."""

from __future__ import annotations

import re

import pytest
import yaml

from hpcxt.errors import ConfigError, InputError
from hpcxt.io.config import SCHEMA, load_config, render_template
from conftest import run_hpcxt


def _write(tmp_path, data, name="c.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def _minimal(tmp_path):
    for f in ("e.fits", "x.fits", "a.arf", "r.rmf"):
        (tmp_path / f).write_text("")
    return {
        "cluster": {"name": "A", "redshift": 0.1, "nh": 0.03},
        "observations": [{"obsid": 1, "events": "e.fits", "exposure_map": "x.fits",
                          "arf": "a.arf", "rmf": "r.rmf"}],
        "prep": {"backend": "products"},
    }


def test_minimal_config_gets_defaults_and_absolute_paths(tmp_path):
    cfg = load_config(_write(tmp_path, _minimal(tmp_path)))
    assert cfg.acb.target_sn == 50.0
    assert cfg.acb.max_radius == 100.0
    assert cfg.fit.min_obs_fraction == 0.09
    assert cfg.fit.model == "xsphabs*xsapec"
    assert cfg.prep.deflare.bin_seconds == 259.28
    assert cfg.observations[0].obsid == "1"
    assert cfg.observations[0].events == str(tmp_path / "e.fits")
    assert cfg.workdir_path == tmp_path / "work"


def test_every_problem_is_reported_with_its_field(tmp_path):
    data = _minimal(tmp_path)
    data["observations"].append({"obsid": 2, "events": "missing.fits", "exposure_map": "x.fits",
                                 "arf": "a.arf", "rmf": "r.rmf"})
    data["acb"] = {"target_sn": -5, "snn": "auto"}
    data["fit"] = {"resolution": "hgh", "model": "xsphabs+xsapec"}
    data["cluster"]["redshift"] = "high"
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, data))
    problems = info.value.problems
    text = str(info.value)
    assert any(p.startswith("observations[1].events: file not found") for p in problems), problems
    assert any(p.startswith("acb.target_sn: must be > 0") for p in problems)
    assert "acb.snn: unknown key (did you mean 'sn'?)" in problems
    assert any(p.startswith("fit.resolution: must be one of high, medium, low")
               and "did you mean 'high'" in p for p in problems)
    assert any(p.startswith("fit.model:") for p in problems)
    assert any(p.startswith("cluster.redshift: must be a number") for p in problems)
    assert len(problems) == 6
    assert str(tmp_path / "c.yaml") in text


def test_top_level_typo_and_missing_required(tmp_path):
    data = _minimal(tmp_path)
    data["acbb"] = {}
    del data["cluster"]["nh"]
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, data))
    assert "acbb: unknown key (did you mean 'acb'?)" in info.value.problems
    assert "cluster.nh: required but missing" in info.value.problems


def test_duplicate_obsid_bad_band_and_start_outside_the_range(tmp_path):
    data = _minimal(tmp_path)
    data["observations"].append(dict(data["observations"][0]))
    data["prep"]["energy_band"] = [8.0, 0.7]
    data.setdefault("fit", {})["kT_range"] = [1.0, 7.0]  # kT_init stays 8
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, data))
    assert "observations[1].obsid: duplicate of observations[0]" in info.value.problems
    assert any(p.startswith("prep.energy_band: low must be below high") for p in info.value.problems)
    assert ("fit.kT_init: 8 keV is outside fit.kT_range [1, 7] keV: the fit starts there"
            in info.value.problems)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML: line"):
        load_config(bad)


def test_section_hash_tracks_only_named_fields(tmp_path):
    data = _minimal(tmp_path)
    a = load_config(_write(tmp_path, data, "a.yaml"))
    data["maps"] = {"png": False}
    b = load_config(_write(tmp_path, data, "b.yaml"))
    data["fit"] = {"model": "xsphabs*xsbremss"}
    c = load_config(_write(tmp_path, data, "c.yaml"))
    assert a.section_hash("fit") == b.section_hash("fit")
    assert a.section_hash("maps") != b.section_hash("maps")
    assert b.section_hash("fit") != c.section_hash("fit")
    assert b.section_hash("fit.resolution") == c.section_hash("fit.resolution")


def test_template_is_a_valid_config_once_redshift_and_nh_are_given(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text(render_template("A2142", redshift=0.0909, nh=0.0381))
    cfg = load_config(p, check_files=False)
    assert cfg.cluster.name == "A2142"
    assert (cfg.cluster.redshift, cfg.cluster.nh) == (0.0909, 0.0381)
    assert cfg.fit.checkpoint_seconds == 60.0
    assert cfg.fit.abundance_table == "angr"
    with pytest.raises(ConfigError, match=r"observations\[0\].events: file not found"):
        load_config(p)


def test_template_placeholders_are_refused_naming_the_key(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text(render_template("A2142"))
    assert "  redshift: REQUIRED " in p.read_text() and "  nh: REQUIRED " in p.read_text()
    with pytest.raises(ConfigError) as info:
        load_config(p, check_files=False)
    problems = info.value.problems
    assert len(problems) == 2, problems
    assert problems[0].startswith("cluster.redshift: still the template's placeholder REQUIRED")
    assert problems[1].startswith("cluster.nh: still the template's placeholder REQUIRED")
    assert "1e22 cm^-2" in problems[1]
    # one given, one kept: only the kept one is named
    p.write_text(render_template("A2142", redshift=0.0909))
    with pytest.raises(ConfigError) as info:
        load_config(p, check_files=False)
    assert [q.split(":")[0] for q in info.value.problems] == ["cluster.nh"]
    # on the command line: one line, exit 2, before any work
    p.write_text(render_template("A2142"))
    proc = run_hpcxt("prep", p, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"hpcxt: error: {p}: cluster.redshift: still the template's")
    assert "; cluster.nh: still the template's placeholder" in lines[0]
    assert not (tmp_path / "work").exists()


def _schema_keys(children, where=""):
    for key, spec in children.items():
        yield f"{where}{key}", spec
        if spec.kind in ("section", "list"):
            yield from _schema_keys(spec.children, f"{where}{key}.")


def _template_keys(text: str) -> dict:
    """Dotted key -> its comment (inline, or the comment lines just above it)."""
    out, stack, above = {}, [], []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            above = []
            continue
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            continue
        m = re.match(r"^(\s*)(- )?([A-Za-z_]\w*):([^#]*)(?:#(.*))?$", line)
        assert m, f"not a key line: {line!r}"
        indent = len(m.group(1)) + (2 if m.group(2) else 0)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = m.group(3)
        out[".".join([k for _, k in stack] + [key])] = " ".join(
            above + [(m.group(5) or "").strip()]).strip()
        stack.append((indent, key))
        above = []
    return out


def test_every_key_of_the_schema_is_commented_in_the_template():
    keys = _template_keys(render_template("A2142"))
    schema = dict(_schema_keys(SCHEMA))
    assert set(keys) == set(schema)
    for key, comment in keys.items():
        assert len(comment) >= 10, f"{key} has no comment in the template"
        if schema[key].required and schema[key].kind not in ("section", "list"):
            assert comment.startswith("REQUIRED: "), key
    # the keys the issue found uncommented, and what auto picks
    for key in ("fit.error_sigma", "fit.kT_init", "prep.ciao.data_dir", "maps.drop_failed",
                "fit.method", "fit.checkpoint_seconds"):
        assert keys[key], key
    assert "background_subtracted when prep made a background" in keys["acb.sn"]
    table = keys["fit.abundance_table"]
    assert "angr" in table and "XSPEC's default" in table


def test_template_shows_every_default():
    raw = yaml.safe_load(render_template("A2142", redshift=0.1, nh=0.03))
    for key, spec in _schema_keys(SCHEMA):
        if spec.kind in ("section", "list") or spec.required or spec.example is not None:
            continue
        node = raw
        for part in key.split("."):
            node = node[0][part] if isinstance(node, list) else node[part]
        assert node == spec.default, (key, node, spec.default)


def test_abundance_table_is_checked_and_part_of_the_fit_inputs(tmp_path):
    from hpcxt.io.checkpoint import fit_inputs, inputs_hash

    data = _minimal(tmp_path)
    default = load_config(_write(tmp_path, data))
    data["fit"] = {"abundance_table": "wilm"}
    wilm = load_config(_write(tmp_path, data))
    assert (default.fit.abundance_table, wilm.fit.abundance_table) == ("angr", "wilm")
    assert inputs_hash(fit_inputs(default)) != inputs_hash(fit_inputs(wilm))
    data["fit"] = {"abundance_table": "wlim"}
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, data))
    assert info.value.problems[0].startswith("fit.abundance_table: must be one of angr,")
    assert "did you mean 'wilm'" in info.value.problems[0]


def test_cli_reports_config_errors_in_one_line_with_exit_2(tmp_path):
    data = _minimal(tmp_path)
    data["fit"] = {"resolutoin": "high"}
    p = _write(tmp_path, data)
    proc = run_hpcxt("prep", p, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("hpcxt: error: ")
    assert "fit.resolutoin: unknown key (did you mean 'resolution'?)" in lines[0]
    assert "Traceback" not in proc.stderr


def test_cli_init_writes_template_and_refuses_overwrite(tmp_path):
    proc = run_hpcxt("init", "A1795", "--dir", tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "A1795.yaml").read_text()
    assert "name: A1795" in text and "target_sn: 50.0" in text
    assert "fill in cluster.redshift and cluster.nh" in proc.stdout
    again = run_hpcxt("init", "A1795", "--dir", tmp_path, timeout=60)
    assert again.returncode != 0
    assert "exists" in again.stderr
