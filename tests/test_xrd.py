"""dao.xrd and ``dao xrd``: a realistic "measured" pattern (strained cell, broadened peaks, preferred
orientation, background, counting noise, zero shift) is matched to the right polymorph among decoys of the
same composition; an unrelated pattern matches nothing; bad patterns are one error line, nothing written."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dao.cli import main
from dao.errors import DAOError
from dao.xrd import MATCH_THRESHOLD, check_pattern, compare, read_pattern, rerank_by_pattern, wavelength_of


def tio2_polymorphs() -> dict:
    from pymatgen.core import Lattice, Structure

    return {
        "rutile": Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"],
                                            [[0, 0, 0], [0.305, 0.305, 0]]),
        "anatase": Structure.from_spacegroup("I4_1/amd", Lattice.tetragonal(3.785, 9.514), ["Ti", "O"],
                                             [[0, 0, 0], [0, 0, 0.2083]]),
        "brookite": Structure.from_spacegroup("Pbca", Lattice.orthorhombic(9.184, 5.447, 5.145), ["Ti", "O", "O"],
                                              [[0.1289, 0.0972, 0.8628], [0.0095, 0.1491, 0.1835],
                                               [0.2314, 0.1110, 0.5366]]),
    }


def nacl():
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def measured(structure, strain=(1.025, 1.025, 1.015), fwhm=0.15, shift=0.04, po=0.8, counts=5000.0, seed=0,
             wavelength=1.54184, lo=10.0, hi=80.0, step=0.02) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic measurement: anisotropically strained cell, Gaussian peaks widening with angle, March–Dollase
    preferred orientation along c (ratio ``po``), a decaying background with an amorphous hump, a zero shift and
    Poisson counting noise."""
    from pymatgen.analysis.diffraction.xrd import XRDCalculator
    from pymatgen.core import Lattice

    rng = np.random.default_rng(seed)
    s = structure.copy()
    lat = s.lattice
    s.lattice = Lattice.from_parameters(lat.a * strain[0], lat.b * strain[1], lat.c * strain[2],
                                        lat.alpha, lat.beta, lat.gamma)
    sim = XRDCalculator(wavelength=wavelength).get_pattern(s, two_theta_range=(lo, hi))
    x = np.arange(lo, hi, step)
    y = np.zeros_like(x)
    recip = s.lattice.reciprocal_lattice
    for pos, inten, hkls in zip(sim.x, sim.y, sim.hkls):
        hkl = hkls[0]["hkl"]
        g = recip.get_cartesian_coords(hkl if len(hkl) == 3 else (hkl[0], hkl[1], hkl[3]))
        cos2 = (g[2] / np.linalg.norm(g)) ** 2
        factor = (po ** 2 * cos2 + (1 - cos2) / po) ** -1.5
        sigma = fwhm * (1 + 0.5 * pos / 90) / 2.3548
        y += inten * factor * np.exp(-0.5 * ((x - pos - shift) / sigma) ** 2)
    y = y / y.max() * counts + 300 + 400 * np.exp(-(x - lo) / 15) + 200 * np.exp(-0.5 * ((x - 25) / 6) ** 2)
    return x, rng.poisson(y).astype(float)


def write_xy(path, x, y):
    np.savetxt(path, np.c_[x, y], header="2theta intensity")
    return path


def test_true_polymorph_ranks_first_among_decoys():
    poly = tio2_polymorphs()
    for truth in poly:
        x, y = measured(poly[truth])
        ranked = compare(check_pattern(x, y, 1.54184, truth), list(poly.items()))
        assert ranked[0].name == truth and ranked[0].matched, ranked
        assert ranked[0].score - ranked[1].score > 0.1, ranked
        assert 1.01 <= ranked[0].scale <= 1.03  # the strain found back (2.5 % on a and b, 1.5 % on c)


def test_robust_to_weak_pattern_strong_orientation_and_broad_peaks():
    poly = tio2_polymorphs()
    for kw in (dict(counts=500.0), dict(po=0.6, seed=1), dict(fwhm=0.4, strain=(0.97, 0.98, 0.975), seed=2)):
        x, y = measured(poly["anatase"], **kw)
        assert compare(check_pattern(x, y, 1.54184), list(poly.items()))[0].name == "anatase", kw


def test_unrelated_pattern_matches_nothing():
    from dao.xrd.output import rank_rows, verdict

    x, y = measured(nacl())
    _, rows = rank_rows(check_pattern(x, y, 1.54184, "nacl"), [(n, s, None) for n, s in tio2_polymorphs().items()])
    assert not any(r["matched"] for r in rows) and all(r["score"] < MATCH_THRESHOLD for r in rows)
    assert verdict(rows).startswith("no candidate matches the pattern")


def test_cli_ranks_cifs_and_prediction_folder(tmp_path, capsys):
    poly = tio2_polymorphs()
    pred = tmp_path / "pred"
    pred.mkdir()
    samples = []
    for k, (name, st) in enumerate(poly.items(), 1):
        st.to(filename=str(pred / f"TiO2_rank{k}.cif"))
        samples.append({"name": f"TiO2_rank{k}", "cif": f"TiO2_rank{k}.cif", "energy_per_atom": -0.1 * k})
    (pred / "summary.json").write_text(json.dumps({"samples": samples}))
    xy = write_xy(tmp_path / "brookite.xye", *measured(poly["brookite"]))
    main(["xrd", str(xy), str(pred), "--out", str(tmp_path / "res")])
    out = capsys.readouterr().out
    assert "best match: TiO2_rank3" in out
    res = json.loads((tmp_path / "res" / "xrd.json").read_text())
    top = res["ranking"][0]
    assert top["name"] == "TiO2_rank3" and top["energy_per_atom"] == pytest.approx(-0.3)
    assert [r["rank"] for r in res["ranking"]] == [1, 2, 3]
    csv_lines = (tmp_path / "res" / "xrd.csv").read_text().splitlines()
    assert csv_lines[0].startswith("rank,name,formula,score") and len(csv_lines) == 4
    png = (tmp_path / "res" / top["overlay"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    main(["xrd", str(xy), str(pred / "TiO2_rank3.cif"), "--out", str(tmp_path / "res"), "--overwrite",
          "--threshold", "0.99"])
    assert "no candidate matches the pattern" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["overlay_001_TiO2_rank3.png", "xrd.csv", "xrd.json"]


def test_other_wavelength_and_formats(tmp_path):
    poly = tio2_polymorphs()
    x, y = measured(poly["rutile"], wavelength=0.71073, lo=5.0, hi=40.0, step=0.01)
    path = tmp_path / "mo.csv"
    path.write_text("two_theta,intensity,sigma\n" + "".join(f"{a},{b},{np.sqrt(b)}\n" for a, b in zip(x, y)))
    pat = read_pattern(path, "MoKa")
    assert pat.wavelength == pytest.approx(0.71073) and len(pat.two_theta) == len(x)
    assert compare(pat, list(poly.items()))[0].name == "rutile"
    assert wavelength_of("1.5406") == pytest.approx(1.5406) and wavelength_of("cuka1") == pytest.approx(1.54056)


def test_rerank_puts_matching_candidates_first_energy_breaks_near_ties():
    poly = tio2_polymorphs()
    x, y = measured(poly["anatase"])
    pat = check_pattern(x, y, 1.54184)
    structures = [poly["rutile"], poly["brookite"], poly["anatase"], poly["anatase"].copy()]
    order, scores = rerank_by_pattern(structures, pat, energies=[-1.0, -0.9, -0.5, -0.2])
    assert scores[2] == scores[3] >= MATCH_THRESHOLD > max(scores[0], scores[1])
    assert order == [2, 3, 0, 1]  # the matching anatase copies first, lower energy first; the rest in energy order
    order, _ = rerank_by_pattern(structures, pat)
    assert order == [2, 3, 0, 1]
    assert rerank_by_pattern([], pat) == ([], [])


def _bad_patterns(tmp_path):
    x = np.linspace(10, 80, 400)
    peak = 100 + 1000 * np.exp(-0.5 * ((x - 30) / 0.1) ** 2)
    cases = {
        "missing": (None, "pattern file not found"),
        "binary": (b"\x89PNG\r\n\x1a\n\x00\xff\xfe" * 20, "not a text file"),
        "flat": ((x, np.full_like(x, 50.0)), "no peaks"),
        "negative": ((x, peak - 200), "negative intensity"),
        "short": ((x[:10], peak[:10]), "at least"),
        "nonmonotonic": ((x[::-1], peak), "not strictly increasing"),
        "nan": ((x, np.where(x > 50, np.nan, peak)), "NaN"),
        "words": (b"10 20\n11 abc\n", "not two numbers"),
    }
    out = {}
    for name, (content, needle) in cases.items():
        path = tmp_path / f"{name}.xy"
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            write_xy(path, *content)
        out[name] = (path, needle)
    good = write_xy(tmp_path / "good.xy", x, peak)
    return out, good


def test_bad_input_is_one_error_line_and_nothing_written(tmp_path, capsys):
    cases, good = _bad_patterns(tmp_path)
    cif = tmp_path / "rutile.cif"
    tio2_polymorphs()["rutile"].to(filename=str(cif))
    runs = [([str(path)], needle) for path, needle in cases.values()]
    runs += [([str(good), "--wavelength", w], needle) for w, needle in
             (("0", "wavelength must be a positive"), ("-1.5", "wavelength must be a positive"),
              ("XxKa", "unknown wavelength"), ("nan", "wavelength must be a positive"))]
    runs.append(([str(good), str(tmp_path / "nothing.cif")], "no such file"))
    for k, (args, needle) in enumerate(runs):
        out = tmp_path / f"out{k}"
        structures = [] if len(args) > 1 and args[-1].endswith(".cif") else [str(cif)]
        with pytest.raises(SystemExit) as exc:
            main(["xrd", *args[:1], *structures, *args[1:], "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2, (args, err)
        assert len(err) == 1 and err[0].startswith("dao: error:") and needle in err[0], (args, err)
        assert not out.exists()
    with pytest.raises(DAOError, match="no peaks"):
        x = np.linspace(10, 80, 400)
        check_pattern(x, np.random.default_rng(0).poisson(100.0, len(x)).astype(float), 1.54)


def test_true_polymorph_ranks_first_among_polymorphs_and_dao_samples():
    """Decoys of the same composition as a user meets them: the other polymorphs and the bundled generator's
    samples (any sample that is itself the true structure by StructureMatcher is not a decoy)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from dao.formula import parse_formula
    from dao.models.checkpoint import load_generator
    from dao.prediction import generate

    poly = tio2_polymorphs()
    samples = [s.structure for s in generate(load_generator("default-flow"), [parse_formula("Ti4O8")], 6, seed=0)
               if s.structure is not None]
    assert len(samples) >= 4
    truth = poly["rutile"]
    decoys = [(f"dao_sample_{i}", s) for i, s in enumerate(samples) if not StructureMatcher().fit(s, truth)]
    x, y = measured(truth)
    ranked = compare(check_pattern(x, y, 1.54184, "rutile"), list(poly.items()) + decoys)
    assert ranked[0].name == "rutile" and ranked[0].matched, ranked
    assert not any(r.matched for r in ranked if r.name.startswith("dao_sample")), ranked
