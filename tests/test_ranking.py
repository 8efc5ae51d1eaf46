"""Ranked prediction (docs/design.md, 'Ranked prediction'): sources, validity screen, merging, judging, output."""
from __future__ import annotations

import json

import pytest
import torch

from dao.candidates import Candidate
from dao.formula import CellComposition, parse_formula
from dao.ranking import RankOptions, rank_candidates, validity_flags

from .test_cli import run_dao


def _candidate(structure, source="generated", prior=0.0, **info) -> Candidate:
    return Candidate(CellComposition.of_structure(structure), structure, source, dict(info), prior)


def test_validity_flags_measure_distance_and_volume(structures):
    nacl = structures["NaCl"]
    flags = validity_flags(nacl)
    assert flags["valid"] and flags["min_distance"] == pytest.approx(5.64 / 2, abs=1e-3)
    assert flags["volume_per_atom"] == pytest.approx(nacl.volume / 2, abs=1e-3)
    squeezed = nacl.copy()
    squeezed.replace(1, "Cl", nacl[0].coords + [0.1, 0, 0], coords_are_cartesian=True)  # 0.1 Å from Na
    assert validity_flags(squeezed)["min_distance"] < 0.5 and not validity_flags(squeezed)["valid"]


def test_invalid_dropped_and_duplicates_merged_in_source_order(structures):
    from pymatgen.core import Lattice, Structure

    nacl = structures["NaCl"]
    close = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.02, 0, 0]])  # 0.1 Å apart
    rotated = nacl.copy()
    rotated.make_supercell([[1, 1, 0], [0, 1, 0], [0, 0, 1]])  # the same crystal in another cell
    gas = Structure(Lattice.cubic(20.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # 4000 Å³/atom
    cands = [_candidate(rotated, "generated", sample=0), _candidate(close, sample=1),
             _candidate(nacl, "template", prior=0.5, template_id="t-1"), _candidate(gas, sample=2)]
    ranking = rank_candidates(cands, judge="none")
    assert ranking.counts == {"proposed": 4, "invalid_dropped": 2, "duplicates_merged": 1, "judged": 0,
                              "proposed_template": 1, "proposed_generated": 3, "proposed_random": 0}
    [kept] = ranking.ranked
    assert kept.candidate.source == "template" and kept.candidate.info["duplicates"] == 1 and kept.rank == 1


def test_judge_orders_by_relaxed_energy(structures):
    """DAO-P as judge: the right NaCl relaxes to a lower energy than a CsCl-type NaCl, whatever the order."""
    from pymatgen.core import Lattice, Structure

    rocksalt = structures["NaCl"]
    cscl_type = Structure(Lattice.cubic(3.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    ranking = rank_candidates([_candidate(cscl_type, sample=0), _candidate(rocksalt, sample=1)], judge="dao",
                              steps=5, seconds=30.0)
    assert ranking.judge == "dao" and ranking.counts["judged"] == 2
    energies = [j.energy_per_atom for j in ranking.ranked]
    assert energies == sorted(energies)
    assert all(j.record["steps"] <= 5 and j.record["status"] in ("converged", "not_converged") for j in ranking.ranked)
    # templates keep their learned order ahead of judged samples, whatever their energy
    wurtzite = structures["ZnO"].copy()
    wurtzite.replace_species({"Zn": "Na", "O": "Cl"})
    wurtzite.scale_lattice(rocksalt.volume * 2 * 1.3)  # a poor substitution: high energy, still a template
    template = _candidate(wurtzite, "template", prior=0.1)
    ranking = rank_candidates([_candidate(cscl_type, sample=0), _candidate(rocksalt, sample=1), template],
                              judge="dao", steps=5, seconds=30.0)
    assert [j.candidate.source for j in ranking.ranked] == ["template", "generated", "generated"]
    assert ranking.ranked[1].energy_per_atom <= ranking.ranked[2].energy_per_atom


def test_judge_aware_template_ranker_sees_the_judges_energies(tmp_path):
    """A ranker whose only weight is on the energy feature puts the lower-energy substitution first."""
    import numpy as np

    from dao.templates import TemplateIndex
    from dao.templates.ranker import ENERGY_FEATURE, FEATURES, TemplateRanker
    from tests.conftest import small_structures, write_csv

    index = TemplateIndex.build([write_csv(tmp_path / "t.csv", small_structures())])
    width = len(FEATURES) + 1
    w1 = np.zeros((width, 1))
    w1[-1, 0] = -1.0  # higher energy above the lowest -> lower score
    ranker = TemplateRanker(np.zeros(width), np.ones(width), w1, np.zeros(1), np.ones(1), 0.0, energy=True)
    assert ranker.feature_names[-1] == ENERGY_FEATURE
    ranked = index.with_ranker(None, {"fake": ranker})
    cell = parse_formula("KBr")
    plain = ranked.propose(cell, limit=4)
    for wanted in (0, 1):  # whichever substitution the judge calls lowest goes first
        def energy(structures, wanted=wanted):
            return [0.0 if k == wanted else 0.5 for k in range(len(structures))]
        got = ranked.propose(cell, limit=4, judge="fake", energy=energy)
        assert got[0].info["judge_energy"] == 0.0
        assert sorted(c.info["template_formula"] for c in got) == sorted(c.info["template_formula"] for c in plain)
    ranker.save(tmp_path / "r.npz")
    assert TemplateRanker.load(tmp_path / "r.npz").energy


def _rank(tiny_generator, formula, index=None, seed=0, **kw):
    from dao.prediction import rank_formula

    opts = RankOptions(judge="none", templates=index, candidates=kw.pop("candidates", 6))
    return rank_formula(formula, seed=seed, model=tiny_generator, steps=3, device="cpu", options=opts, **kw)


def test_ranking_is_deterministic_for_a_seed(tiny_generator, tiny_index):
    runs = [_rank(tiny_generator, "NaCl", tiny_index, seed=3)[1] for _ in range(2)]
    assert runs[0].counts == runs[1].counts and runs[0].counts["proposed_template"] >= 1
    keys = [[(j.candidate.source, j.candidate.info.get("sample"), j.candidate.info.get("template_id"))
             for j in r.ranked] for r in runs]
    assert keys[0] == keys[1]
    assert all(a.structure == b.structure for a, b in zip(runs[0].ranked, runs[1].ranked))
    assert runs[0].ranked[0].candidate.source == "template"  # judge "none": templates first


def test_composition_without_templates_gets_generated_candidates(tiny_generator, tiny_index):
    run, ranking = _rank(tiny_generator, "LiFeO2", tiny_index, candidates=4)
    assert ranking.counts["proposed_template"] == 0 and ranking.counts["proposed_generated"] > 0
    assert {c.z for c in run.cells} == {1, 2, 3}  # every Z within the tiny model's 12 atoms
    assert all(j.candidate.source == "generated" and {"method", "sample", "z"} <= set(j.candidate.info)
               for j in ranking.ranked)


def test_a_52_atom_cell_works():
    from dao.models.generator import DAOGenerator, GeneratorConfig
    from dao.nn.crysformer import CrysformerConfig

    torch.manual_seed(0)
    cfg = GeneratorConfig(model=CrysformerConfig(hidden=16, layers=1, heads=2, num_freqs=4, time_dim=8), max_atoms=52)
    run, ranking = _rank(DAOGenerator(cfg).eval(), "NaCl", atoms=52, candidates=2)
    assert [c.num_atoms for c in run.cells] == [52] and len(run.samples) == 2
    assert ranking.counts["proposed_generated"] == sum(s.structure is not None for s in run.samples)
    assert all(len(j.structure) == 52 for j in ranking.ranked)


def test_ranked_cells_stop_at_20_atoms_unless_the_formula_or_max_atoms_asks_for_more():
    from dao.models.generator import DAOGenerator, GeneratorConfig
    from dao.nn.crysformer import CrysformerConfig
    from dao.prediction import sample_formula

    torch.manual_seed(0)
    cfg = GeneratorConfig(model=CrysformerConfig(hidden=16, layers=1, heads=2, num_freqs=4, time_dim=8), max_atoms=52)
    model = DAOGenerator(cfg).eval()

    def sizes(formula, **kw):
        run = sample_formula(formula, 1, seed=0, steps=2, model=model, device="cpu", all_cells=True, total=1, **kw)
        return [c.num_atoms for c in run.cells]

    assert sizes("NaCl") == list(range(2, 21, 2))  # the default: every Z up to 20 atoms
    assert sizes("Na12Cl12") == list(range(2, 25, 2))  # a larger formula as typed is still tried
    assert sizes("NaCl", max_atoms=52) == list(range(2, 53, 2))  # --max-atoms: up to the model's limit


def test_unknown_judge_and_missing_index_are_clean_errors(structures, tmp_path):
    from dao.errors import DAOError
    from dao.ranking import template_candidates

    with pytest.raises(DAOError, match="unknown judge"):
        rank_candidates([], judge="vasp")
    with pytest.raises(DAOError, match="template index"):
        template_candidates([parse_formula("NaCl")], str(tmp_path / "missing.npz"))


def test_cli_ranked_summary_and_no_rank(tmp_path, tiny_checkpoint, tiny_index):
    out = tmp_path / "ranked"
    proc = run_dao("predict", "NaCl", "-n", "3", "--model", str(tiny_checkpoint), "--out", str(out), "--steps", "3",
                   "--judge", "none", "--templates", str(tiny_index), "--candidates", "4", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    counts = summary["ranking"]["counts"]
    assert summary["ranking"]["judge"] == "none" and counts["proposed"] == counts["proposed_template"] + counts[
        "proposed_generated"] and counts["proposed_template"] >= 1
    recs = summary["samples"]
    assert [r["rank"] for r in recs] == list(range(1, len(recs) + 1)) and summary["num_written"] == len(recs) <= 3
    for r in recs:
        assert {"energy_per_atom", "source", "source_info", "min_distance", "volume_per_atom", "valid"} <= set(r)
        assert r["valid"] and (out / f"NaCl_rank{r['rank']}.cif").is_file() and r["cif"] == f"NaCl_rank{r['rank']}.cif"
    assert recs[0]["source"] == "template" and recs[0]["source_info"]["known"]  # the index holds NaCl itself
    assert "known" in proc.stdout or "known" in proc.stderr
    novel = tmp_path / "novel"
    proc = run_dao("predict", "NaCl", "-n", "3", "--model", str(tiny_checkpoint), "--out", str(novel), "--steps", "3",
                   "--templates", str(tiny_index), "--candidates", "4", "--novel", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    novel_recs = json.loads((novel / "summary.json").read_text())["samples"]
    assert not any(r["source_info"].get("known") for r in novel_recs)
    assert all(r["source_info"].get("template_id") != recs[0]["source_info"]["template_id"] for r in novel_recs)
    from ase.io import read

    frames = read(out / "samples.extxyz", index=":")
    assert [f.info["rank"] for f in frames] == [r["rank"] for r in recs]
    raw = tmp_path / "raw"
    proc = run_dao("predict", "NaCl", "-n", "2", "--model", str(tiny_checkpoint), "--out", str(raw), "--steps", "3",
                   "--no-rank", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((raw / "summary.json").read_text())
    assert "ranking" not in summary and [r["name"] for r in summary["samples"]] == ["NaCl_000", "NaCl_001"]


def test_python_api_ranked_returns_best_first(tiny_generator, tiny_index):
    import dao

    best = dao.predict("NaCl", n=2, model=tiny_generator, steps=3, device="cpu",
                       options=RankOptions(judge="none", templates=str(tiny_index), candidates=4))
    assert 1 <= len(best) <= 2 and best[0].composition.reduced_formula == "NaCl"


@pytest.mark.slow
def test_readme_predict_command(tmp_path):
    """The README's `./run predict CsV3Sb5 -n 5 --out predictions/CsV3Sb5` (bundled models, default judge)."""
    out = tmp_path / "predictions" / "CsV3Sb5"
    proc = run_dao("predict", "CsV3Sb5", "-n", "5", "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_written"] == 5 and summary["ranking"]["judge"] == "none"
    sources = [r["source"] for r in summary["samples"]]
    assert sources == sorted(sources, key=lambda src: src != "template")  # templates (learned order) first
    priors = [r["prior"] for r in summary["samples"] if r["source"] == "template"]
    assert priors == sorted(priors, reverse=True) and all(0 < p < 1 for p in priors)
    assert all((out / f"CsV3Sb5_rank{k}.cif").is_file() for k in range(1, 6))
