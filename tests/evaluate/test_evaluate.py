"""Tests of ``dao.evaluate``: protocol math against direct pymatgen/DiffCSP computations, inputs, CLI, resume."""

from __future__ import annotations

import csv
import gzip
import itertools
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

try:
    import dao.evaluate  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Element, Lattice, Structure

from dao.evaluate import (
    MISSING,
    evaluate,
    is_valid,
    load_predictions,
    load_references,
    write_report,
)
from dao.evaluate import canon, core
from dao.evaluate import runner as task_runner
from dao.evaluate.validity import smact_validity

from tests.conftest import shared_data_dir

warnings.filterwarnings("ignore")


MP20_VAL = (shared_data_dir() or Path("shared-data-not-found")) / "csp" / "mp_20" / "val.csv.gz"
needs_mp20 = pytest.mark.skipif(not MP20_VAL.is_file(),
                                reason=f"shared data not found: {MP20_VAL} (set DAO_DATA_DIR)")


# ------------------------------------------------------------------------------------------- fixtures
def nacl() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def si() -> Structure:
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])


def cscl() -> Structure:
    return Structure.from_spacegroup("Pm-3m", Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def srtio3() -> Structure:
    return Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.905), ["Sr", "Ti", "O"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]])


def zns_zincblende() -> Structure:
    return Structure.from_spacegroup("F-43m", Lattice.cubic(5.41), ["Zn", "S"], [[0, 0, 0], [0.25, 0.25, 0.25]])


def zns_wurtzite() -> Structure:
    return Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.82, 6.26), ["Zn", "S"],
                                     [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.375]])


def nacl3() -> Structure:
    """Rocksalt with half the Na swapped for Cl: sane geometry, not charge-balanceable (SMACT-invalid)."""
    s = nacl()
    na = [i for i, site in enumerate(s) if site.specie.symbol == "Na"]
    for i in na[:2]:
        s.replace(i, "Cl")
    return s


def noisy(s: Structure, sigma: float, seed: int) -> Structure:
    rng = np.random.default_rng(seed)
    out = s.copy()
    cart = out.cart_coords + rng.normal(0.0, sigma, size=(len(out), 3))
    return Structure(out.lattice, out.species, cart, coords_are_cartesian=True)


def strained(s: Structure) -> Structure:
    """Far outside ltol=0.3 / angle_tol=10: lengths x(1.5, 0.7, 1) and a 30 degree shear."""
    a, b, c = s.lattice.abc
    al, be, ga = s.lattice.angles
    lat = Lattice.from_parameters(a * 1.5, b * 0.7, c, al, be, ga - 30)
    return Structure(lat, s.species, s.frac_coords)


def _fresh_matcher_cache() -> None:
    # pymatgen memoises reductions with tolerance-based keys; start each direct computation clean
    StructureMatcher._get_reduced_istructure.cache_clear()


def direct_rms(pred: Structure, ref: Structure) -> float | None:
    _fresh_matcher_cache()
    r = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3).get_rms_dist(pred, ref)
    return None if r is None else r[0]


def diffcsp_rms(pred: Structure, ref: Structure) -> float | None:
    """DiffCSP's RecEval: both rebuilt from (lengths, angles, Z, frac) as ``Crystal`` does."""
    def rebuild(s):
        return Structure(Lattice.from_parameters(*(list(s.lattice.abc) + list(s.lattice.angles))),
                         np.array([sp.Z for sp in s.species]), s.frac_coords, coords_are_cartesian=False)
    try:
        _fresh_matcher_cache()
        r = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3).get_rms_dist(rebuild(pred), rebuild(ref))
    except Exception:
        return None
    return None if r is None else r[0]


# ------------------------------------------------------------------------------------------- validity
def legacy_smact_validity(symbols, counts):
    """DiffCSP eval_utils.smact_validity, transcribed loop for loop (SMACT 2.x data and semantics)."""
    import smact

    space = smact.element_dictionary(symbols)
    els = [space[s] for s in symbols]
    enegs = [e.pauling_eneg for e in els]
    ox_combos = [e.oxidation_states_smact14 or [] for e in els]  # None (noble gases) crashed DiffCSP
    if len(set(symbols)) == 1:
        return True
    if all(s in smact.metals for s in symbols):
        return True
    oxn = 1
    for oxc in ox_combos:
        oxn *= len(oxc)
    if oxn > 1e7:
        return False
    for ox_states in itertools.product(*ox_combos):
        if sum(o * c for o, c in zip(ox_states, counts)) != 0:  # neutral_ratios with stoichs=[(c,)...]
            continue
        try:  # SMACT 2.x eneg_states_test: direct comparisons, TypeError on a missing electronegativity
            ok = True
            for (o1, e1), (o2, e2) in itertools.combinations(zip(ox_states, enegs), 2):
                if (o1 > 0) and (o2 < 0) and (e1 >= e2):
                    ok = False
                    break
                elif (o1 < 0) and (o2 > 0) and (e1 <= e2):
                    ok = False
                    break
        except TypeError:
            ok = True
        if ok:
            return True
    return False


def test_smact_validity_known_cases():
    assert smact_validity(("Na", "Cl"), (1, 1))
    assert not smact_validity(("Na", "Cl"), (1, 3))
    assert smact_validity(("Cu", "Au"), (3, 1))  # all metals pass
    assert smact_validity(("Si",), (1,))  # one element passes
    assert smact_validity(("O", "Fe"), (3, 2))
    assert not smact_validity(("Li", "S"), (1, 4))  # polysulfide: no single-valence balance
    # Pm has no Pauling electronegativity: SMACT 2.x raised TypeError, which DiffCSP counted as passing
    assert smact_validity(("Cl", "Pm"), (3, 1))


def test_smact_validity_matches_transcription():
    comps = [(("Na", "Cl"), (1, 3)), (("O", "Mn", "Ba"), (3, 1, 1)), (("Li", "O", "Ni"), (3, 8, 4)),
             (("H", "C", "N", "O"), (4, 1, 2, 1)), (("O", "Cl", "Pm"), (1, 1, 1)), (("F", "Mn", "Li"), (6, 2, 1)),
             (("S", "Cl", "Mn", "Cr", "Fe"), (3, 2, 1, 1, 1)), (("B", "Si", "Os", "Lu"), (1, 2, 2, 1))]
    for symbols, counts in comps:
        zs = sorted(zip(symbols, counts), key=lambda t: Element(t[0]).Z)
        symbols, counts = tuple(t[0] for t in zs), tuple(t[1] for t in zs)
        assert smact_validity(symbols, counts) == legacy_smact_validity(symbols, counts), symbols


def test_is_valid_reasons():
    assert is_valid(nacl()) == (True, "")
    assert is_valid(nacl3()) == (False, "charge_neutrality")
    crowded = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])  # 0.25 A apart
    ok, reason = is_valid(crowded)
    assert not ok and "min_distance" in reason
    tiny = Structure(Lattice.cubic(0.4), ["Cu"], [[0, 0, 0]])  # 0.064 A^3
    assert is_valid(tiny) == (False, "volume")
    disordered = Structure(Lattice.cubic(4.0), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert is_valid(disordered)[0] is False


# ------------------------------------------------------------------------------------------- matching
def test_prefilter_is_exact():
    """Composition pre-filter rejects only pairs StructureMatcher rejects; same reduced composition in
    different cell sizes (primitive vs conventional) is not rejected."""
    structs = [nacl(), nacl().get_primitive_structure(), cscl(), si(), srtio3(), zns_zincblende(), nacl3(),
               Structure.from_spacegroup("Fm-3m", Lattice.cubic(6.29), ["K", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])]
    for a, b in itertools.product(structs, repeat=2):
        ca, cb = canon.canonicalize(a), canon.canonicalize(b)
        if ca.comp != cb.comp:
            assert direct_rms(a, b) is None
        assert (canon.rms(ca, cb)[0] is None) == (direct_rms(a, b) is None)
    assert canon.rms(canon.canonicalize(nacl().get_primitive_structure()), canon.canonicalize(nacl()))[0] < 1e-6


def test_perturbation_amplitudes_against_direct_matcher():
    refs = [nacl(), si(), cscl(), srtio3(), zns_wurtzite()]
    sigmas = [0.01, 0.05, 0.15, 0.3]
    rows = [(i, sg) for i in range(len(refs)) for sg in sigmas]
    references = [refs[i] for i, _ in rows] + [refs[0], refs[3]]  # two rows with hopeless predictions
    preds = {r: [noisy(refs[i], sg, seed=r)] for r, (i, sg) in enumerate(rows)}
    preds[len(rows)] = [strained(refs[0])]
    preds[len(rows) + 1] = [strained(refs[3])]

    res = evaluate(preds, references, progress=False)
    expect = [direct_rms(preds[r][0], references[r]) for r in range(len(references))]
    exact = [diffcsp_rms(preds[r][0], references[r]) for r in range(len(references))]
    got = [rec["rms_unfiltered"] for rec in res.records]
    assert [g is None for g in got] == [e is None for e in expect]
    for g, e, x in zip(got, expect, exact):
        if g is not None:
            assert g == x  # bit-identical with DiffCSP's reconstruction
            assert g == pytest.approx(e, rel=1e-7, abs=1e-12)
    for r, (i, sg) in enumerate(rows):
        if sg == 0.01:
            assert got[r] is not None and got[r] < 0.02
    assert got[-1] is None and got[-2] is None
    assert res.records[-1]["reason"] == "no_match"

    # DiffCSP RecEval's aggregation, verbatim: object array with None, mean of the matched entries
    rms_dists = np.array(exact, dtype=object)
    assert res.summary["match_rate_diffcsp_k1"] == sum(rms_dists != None) / len(exact)  # noqa: E711
    assert res.summary["rmse_diffcsp_k1"] == rms_dists[rms_dists != None].mean()  # noqa: E711

    matched = [e for e in expect if e is not None]
    n = len(references)
    assert res.summary["match_rate_unfiltered"] == len(matched) / n
    assert res.summary["rmse_unfiltered"] == pytest.approx(sum(matched) / len(matched), rel=1e-7)
    # all fixtures are valid: gating changes nothing
    assert res.summary["match_rate"] == res.summary["match_rate_unfiltered"]
    assert res.summary["rmse"] == res.summary["rmse_unfiltered"]


def test_k_samples_min_rms_and_curve():
    ref = srtio3()
    a, b = noisy(ref, 0.1, 1), noisy(ref, 0.03, 2)
    preds = {0: [strained(ref), a, b], 1: [strained(ref)], 2: [noisy(ref, 0.02, 3)]}
    res = evaluate(preds, [ref, ref, ref], progress=False)
    ra, rb = direct_rms(a, ref), direct_rms(b, ref)
    rec = res.records[0]
    assert rec["matched"] and rec["first_match_k"] == 2
    assert rec["rms"] == pytest.approx(min(ra, rb), rel=1e-7)
    assert rec["best_sample"] == (1 if ra < rb else 2)
    assert res.records[1]["matched"] is False and res.records[1]["reason"] == "no_match"
    assert res.records[1]["sample_outcomes"] == "0:no_match 1:missing 2:missing"
    assert res.summary["k"] == 3
    assert res.summary["match_rate_vs_k"] == [1 / 3, 2 / 3, 2 / 3]
    r2 = res.records[2]["rms"]
    assert res.summary["rmse_vs_k"][1] == pytest.approx((ra + r2) / 2, rel=1e-7)
    assert res.summary["rmse_vs_k"][2] == pytest.approx((min(ra, rb) + r2) / 2, rel=1e-7)
    # k=1 evaluates only the first sample
    res1 = evaluate(preds, [ref, ref, ref], k=1, progress=False)
    assert res1.summary["match_rate"] == pytest.approx(1 / 3)


def test_validity_gate_and_reasons():
    refs = [nacl3(), nacl(), nacl(), nacl(), nacl()]
    kcl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(6.29), ["K", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    preds = {0: [noisy(nacl3(), 0.01, 0)],  # matches, but invalid
             1: [None],  # unreadable
             2: [kcl],  # wrong composition
             3: [MISSING, noisy(nacl(), 0.01, 1)]}  # sample 0 absent, sample 1 matches
    # row 4 missing entirely
    res = evaluate(preds, refs, progress=False)
    reasons = [r["reason"] for r in res.records]
    assert reasons == ["invalid", "unreadable", "wrong_composition", "", "missing"]
    assert [r["reason_unfiltered"] for r in res.records] == ["", "unreadable", "wrong_composition", "", "missing"]
    assert res.summary["match_rate"] == 1 / 5
    assert res.summary["match_rate_unfiltered"] == 2 / 5
    assert res.summary["miss_reasons"] == {"missing": 1, "unreadable": 1, "invalid": 1,
                                           "wrong_composition": 1, "no_match": 0}
    assert "predicted KCl, reference NaCl" in res.records[2]["detail"]
    # DiffCSP single-sample RecEval needs sample 0: row 3's match is at sample 1
    assert res.summary["match_rate_diffcsp_k1"] == 0.0
    assert res.summary["validity"]["reference_valid_rate"] == 4 / 5


def test_polymorph_recovery_pools_samples():
    zb, wz = zns_zincblende(), zns_wurtzite()
    refs = [zb, wz, nacl(), zb.copy()]  # row 3 duplicates row 0: still two ZnS polymorphs
    swapped = {0: [noisy(wz, 0.02, 0)], 1: [noisy(zb, 0.02, 1)], 2: [nacl()], 3: [strained(zb)]}
    res = evaluate(swapped, refs, progress=False)
    pr = res.summary["polymorph_recovery"]
    assert pr["n_compositions"] == 1 and pr["compositions"][0]["n_polymorphs"] == 2
    assert pr["rate"] == 1.0  # each polymorph found by a sample generated for the other row
    assert res.records[0]["matched"] is False and res.records[1]["matched"] is False
    one_only = {0: [noisy(zb, 0.02, 0)], 1: [strained(wz)], 2: [nacl()], 3: [strained(zb)]}
    assert evaluate(one_only, refs, progress=False).summary["polymorph_recovery"]["rate"] == 0.0


class DummyScorer:
    def __init__(self):
        self.calls = 0

    def e_above_hull(self, structures):
        self.calls += 1
        out = []
        for s in structures:
            f = s.composition.reduced_formula
            out.append(None if f == "KCl" else (0.01 if f == "NaCl" else 0.5))
        return out


def test_energy_scorer_stability_rate():
    kcl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(6.29), ["K", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    preds = {0: [nacl(), si()], 1: [kcl, None]}
    scorer = DummyScorer()
    assert isinstance(scorer, core.EnergyScorer)
    res = evaluate(preds, [nacl(), nacl()], energy_scorer=scorer, progress=False)
    st = res.summary["stability"]
    assert scorer.calls == 1
    assert (st["n_generated"], st["n_scored"], st["n_stable"]) == (4, 2, 1)
    assert res.summary["stability_rate"] == 0.25
    assert res.records[0]["min_e_above_hull"] == 0.01 and res.records[1]["min_e_above_hull"] is None


def test_resume_from_cache(tmp_path, monkeypatch):
    refs = [nacl(), si(), srtio3(), cscl()]
    preds = {i: [noisy(s, 0.05, i), noisy(s, 0.1, 10 + i)] for i, s in enumerate(refs)}
    cache = tmp_path / "cache.jsonl"
    real = task_runner.run_task
    calls = []

    def interrupted(task):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(task[1])
        return real(task)

    monkeypatch.setattr(task_runner, "run_task", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate(preds, refs, cache_path=cache, progress=False)
    assert len(cache.read_text().splitlines()) == 5
    with open(cache, "a") as fh:
        fh.write('{"key": "torn-li')  # a write cut short by the interruption

    calls.clear()
    monkeypatch.setattr(task_runner, "run_task", lambda t: (calls.append(t[1]), real(t))[1])
    resumed = evaluate(preds, refs, cache_path=cache, progress=False)
    n_resumed = len(calls)
    fresh = evaluate(preds, refs, progress=False)
    assert n_resumed == fresh.summary["timing"]["tasks_computed"] - 5
    assert resumed.records == fresh.records
    assert resumed.summary["timing"]["tasks_from_cache"] == 5

    monkeypatch.setattr(task_runner, "run_task", lambda t: pytest.fail("cached task recomputed"))
    again = evaluate(preds, refs, cache_path=cache, progress=False)
    assert again.records == fresh.records


def test_workers_pool_agrees_with_serial():
    refs = [nacl(), si(), srtio3(), cscl(), zns_zincblende(), zns_wurtzite()]
    preds = {i: [noisy(s, 0.08, i), strained(s), noisy(s, 0.2, 20 + i)] for i, s in enumerate(refs)}
    serial = evaluate(preds, refs, workers=1, progress=False)
    pooled = evaluate(preds, refs, workers=2, progress=False)
    assert pooled.records == serial.records
    assert pooled.summary["polymorph_recovery"] == serial.summary["polymorph_recovery"]


def test_write_report(tmp_path):
    refs = [nacl(), si()]
    res = evaluate({0: [noisy(nacl(), 0.05, 0)], 1: [None]}, refs, progress=False)
    paths = write_report(res, tmp_path / "out")
    summary = json.loads(paths["summary"].read_text())
    assert summary["match_rate"] == 0.5 and summary["k"] == 1
    rows = list(csv.DictReader(open(paths["per_structure"])))
    assert [r["reason"] for r in rows] == ["", "unreadable"]
    assert float(rows[0]["rms"]) == res.records[0]["rms"]  # full precision
    for key in ("match_rate_vs_k", "rmse_hist"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------- inputs
def write_ref_csv(path: Path, structures, ids) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["material_id", "cif"])
        for mid, s in zip(ids, structures):
            w.writerow([mid, s.to(fmt="cif")])


def test_cif_dir_naming_and_bad_inputs(tmp_path):
    refs = [nacl(), si(), srtio3(), cscl(), zns_zincblende()]
    ids = ["mp-1", "mp-2", "mp-3", "mp-4", "mp-5"]
    d = tmp_path / "pred"
    d.mkdir()
    (d / "0_0.cif").write_text("data_garbage\n_cell_length_a oops\n")
    noisy(nacl(), 0.02, 0).to(filename=str(d / "0_1.cif"))
    cscl().to(filename=str(d / "1_0.cif"))  # wrong composition for Si
    noisy(cscl(), 0.02, 1).to(filename=str(d / "mp-4_0.cif"))  # by material_id
    noisy(zns_zincblende(), 0.02, 2).to(filename=str(d / "4.cif"))  # bare index = sample 0
    nacl().to(filename=str(d / "17_0.cif"))  # no such row
    # row 2 (mp-3) has no prediction
    preds = load_predictions(d, ids)
    assert sorted(preds) == [0, 1, 3, 4]
    assert preds[0][0] is None and isinstance(preds[0][1], Structure)
    res = evaluate(preds, refs, progress=False)
    assert [r["reason"] for r in res.records] == ["", "wrong_composition", "missing", "", ""]
    assert res.records[0]["first_match_k"] == 2


def test_extxyz_and_csv_inputs_agree_with_cif_dir(tmp_path):
    from ase.io import write as ase_write
    from pymatgen.io.ase import AseAtomsAdaptor

    refs = [nacl(), si(), srtio3()]
    ids = ["mp-1", "mp-2", "mp-3"]
    samples = {i: [noisy(s, 0.03, i), noisy(s, 0.12, 5 + i)] for i, s in enumerate(refs)}
    d = tmp_path / "cifs"
    d.mkdir()
    frames, plain = [], []
    rows = []
    for i, lst in samples.items():
        for j, s in enumerate(lst):
            s.to(filename=str(d / f"{i}_{j}.cif"))
            a = AseAtomsAdaptor.get_atoms(s)
            plain.append(a.copy())
            a.info = {"ref_index": i, "sample": j} if i != 1 else {"material_id": ids[i], "sample": j}
            frames.append(a)
            rows.append({"material_id": ids[i], "sample": j, "cif": s.to(fmt="cif")})
    ase_write(tmp_path / "p.extxyz", frames, format="extxyz")
    ase_write(tmp_path / "plain.extxyz", plain, format="extxyz")
    with open(tmp_path / "p.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["material_id", "sample", "cif"])
        w.writeheader()
        w.writerows(rows)
    base = evaluate(load_predictions(d, ids), refs, progress=False).records
    for path in (tmp_path / "p.extxyz", tmp_path / "plain.extxyz", tmp_path / "p.csv"):
        preds = load_predictions(path, ids)
        assert sorted(preds) == [0, 1, 2] and all(len(v) == 2 for v in preds.values())
        got = evaluate(preds, refs, progress=False).records
        for g, b in zip(got, base):
            assert g["matched_unfiltered"] == b["matched_unfiltered"]
            if b["rms_unfiltered"] is not None:
                assert g["rms_unfiltered"] == pytest.approx(b["rms_unfiltered"], rel=1e-5)


def test_load_references_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_references(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("material_id,structure\nmp-1,xx\n")
    with pytest.raises(ValueError, match="no 'cif' column"):
        load_references(bad)
    gz = tmp_path / "r.csv.gz"
    with gzip.open(gz, "wt", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["cif"])
        w.writerow([nacl().to(fmt="cif")])
    structs, ids = load_references(gz)
    assert ids == ["0"] and len(structs[0]) == 8


# ------------------------------------------------------------------------------------------- CLI
def test_cli_end_to_end_and_user_errors(tmp_path):
    from click.testing import CliRunner

    from dao.cli.evaluate import evaluate_command

    refs = [nacl(), si(), srtio3()]
    ref_csv = tmp_path / "ref.csv"
    write_ref_csv(ref_csv, refs, ["mp-1", "mp-2", "mp-3"])
    d = tmp_path / "pred"
    d.mkdir()
    noisy(nacl(), 0.02, 0).to(filename=str(d / "0_0.cif"))
    (d / "1_0.cif").write_text("not a cif")
    runner = CliRunner()
    out = tmp_path / "out"
    r = runner.invoke(evaluate_command, ["--pred", str(d), "--ref", str(ref_csv), "--out", str(out),
                                         "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "match rate (unfiltered)   33.33 %" in r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["miss_reasons"]["unreadable"] == 1 and summary["miss_reasons"]["missing"] == 1
    assert summary["input"]["n_unreadable"] == 1
    for name in ("per_structure.csv", "match_rate_vs_k.png", "rmse_hist.png", "cache.jsonl"):
        assert (out / name).is_file()

    r = runner.invoke(evaluate_command, ["--pred", str(d), "--ref", str(tmp_path / "missing.csv"),
                                         "--out", str(out)])
    assert r.exit_code != 0 and "reference file not found" in r.output and "Traceback" not in r.output
    junk = tmp_path / "junk.csv.gz"
    junk.write_bytes(b"\x1f\x8b\x08garbage")
    r = runner.invoke(evaluate_command, ["--pred", str(d), "--ref", str(junk), "--out", str(out)])
    assert r.exit_code != 0 and "cannot read reference CSV" in r.output
    assert isinstance(r.exception, SystemExit)  # a ClickException, not a crash


def test_import_stays_light():
    import subprocess

    code = ("import sys, dao.evaluate, dao.cli.evaluate; "
            "sys.exit(int(any(m in sys.modules for m in ('torch', 'matplotlib.pyplot'))))")
    assert subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
                          ).returncode == 0


# ------------------------------------------------------------------------------------------- shared data
@needs_mp20
def test_mp20_self_match_and_shuffled():
    refs, ids = load_references(MP20_VAL)
    refs, ids = refs[:40], ids[:40]
    n = len(refs)
    own = evaluate({i: [refs[i]] for i in range(n)}, refs, reference_ids=ids, progress=False)
    s = own.summary
    assert s["match_rate_unfiltered"] == 1.0 and s["rmse_unfiltered"] < 1e-6
    # the gated loss is exactly the references that fail the validity gate themselves
    invalid = [i for i in range(n) if not is_valid(refs[i])[0]]
    assert s["match_rate"] == (n - len(invalid)) / n
    assert {r["ref_index"] for r in own.records if r["reason"] == "invalid"} == set(invalid)
    assert s["validity"]["reference_valid_rate"] == (n - len(invalid)) / n

    shift = {i: [refs[(i + 1) % n]] for i in range(n)}  # derangement
    sh = evaluate(shift, refs, reference_ids=ids, progress=False)
    expect = [direct_rms(refs[(i + 1) % n], refs[i]) for i in range(n)]
    assert sh.summary["match_rate_unfiltered"] == sum(e is not None for e in expect) / n
    assert sh.summary["match_rate_unfiltered"] <= 0.05
