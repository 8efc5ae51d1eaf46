"""TemplateIndex: leakage guard, species assignment, volume, save/load, bad files, the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dao.formula import parse_formula
from dao.templates import TemplateIndex, TemplateIndexError
from dao.templates.assign import assignments
from dao.templates.elements import DISTANCES, distance_matrix
from tests.conftest import small_structures, write_csv


@pytest.fixture
def index(tmp_path):
    return TemplateIndex.build([write_csv(tmp_path / "tiny.csv", small_structures())])


def test_build_indexes_every_structure_once(tmp_path):
    structures = small_structures()
    path = write_csv(tmp_path / "tiny.csv", structures)
    index = TemplateIndex.build([path, path])  # the second copy duplicates every entry
    assert len(index) == len(structures)
    assert sorted(index.arrays.ids) == sorted(f"test-{i}" for i in range(len(structures)))


def test_nacl_template_gives_rock_salt_kbr_with_larger_volume(index, tmp_path):
    cands = index.propose(parse_formula("KBr"), limit=8)
    assert sorted(c.info["template_formula"] for c in cands) == ["CsCl", "NaCl"]
    assert [c.prior for c in cands] == sorted((c.prior for c in cands), reverse=True)
    nacl = small_structures()["NaCl"]
    cands = TemplateIndex.build([write_csv(tmp_path / "nacl.csv", {"NaCl": nacl})]).propose(parse_formula("KBr"))
    assert len(cands) == 1  # K on Cl's site is the same rock salt: proposed once
    best = cands[0]
    assert best.source == "template"
    assert best.structure.composition.reduced_formula == "KBr" and len(best.structure) == 2
    assert best.info["template_formula"] == "NaCl"
    assert best.info["assignment"] == {"Na": "K", "Cl": "Br"}  # the cation on the cation site
    assert best.structure.volume > 1.2 * nacl.volume
    assert best.prior == pytest.approx(best.info["similarity"]) and 0 < best.prior <= 1
    from pymatgen.analysis.structure_matcher import StructureMatcher

    kbr_rock_salt = nacl.copy()
    kbr_rock_salt.replace_species({"Na": "K", "Cl": "Br"})
    assert StructureMatcher().fit(best.structure, kbr_rock_salt)


def test_no_template_gives_empty_list(index):
    assert index.propose(parse_formula("LiNaKO")) == []
    assert index.propose(parse_formula("MgF2")) == []  # TiO2 is indexed with 6 sites, MgF2 asks for 3


def test_equivalent_substitutions_are_proposed_once(index):
    cands = index.propose(parse_formula("SiC"), limit=8)
    # NaCl and CsCl with Si on either site: swapping species gives the same structure, so one per template
    assert sorted(c.info["template_formula"] for c in cands) == ["CsCl", "NaCl"]


def test_leakage_guard_by_id_and_by_structure(index):
    nacl = small_structures()["NaCl"]
    by_id = index.without(ids=["test-0"])  # test-0 is NaCl
    by_structure = index.without(structures=[nacl.copy().perturb(0.01)])
    for guarded in (by_id, by_structure):
        assert len(guarded) == len(index) - 1
        assert all(c.info["template_id"] != "test-0" for c in guarded.propose(parse_formula("NaCl")))
    kcl = nacl.copy()
    kcl.replace_species({"Na": "K"})
    assert len(index.without(structures=[kcl])) == len(index)  # same structure, other formula: kept


def test_build_exclude_drops_split_entries(tmp_path):
    structures = small_structures()
    path = write_csv(tmp_path / "corpus.csv", structures)
    split = write_csv(tmp_path / "split.csv", {"NaCl": structures["NaCl"]})  # same id test-0
    renamed = tmp_path / "renamed.csv"
    renamed.write_text(split.read_text().replace("test-0", "other-id"))
    for excl in (split, renamed):  # by id, then by structure alone
        index = TemplateIndex.build([path], exclude=[excl])
        assert "test-0" not in set(index.arrays.ids) and len(index) == len(structures) - 1


def test_save_load_round_trip(index, tmp_path):
    index.save(tmp_path / "t.npz")
    loaded = TemplateIndex.load(tmp_path / "t.npz")
    assert len(loaded) == len(index)
    assert list(loaded.arrays.ids) == list(index.arrays.ids)
    np.testing.assert_allclose(loaded.arrays.frac, index.arrays.frac)
    a, b = index.propose(parse_formula("KBr")), loaded.propose(parse_formula("KBr"))
    assert [c.info for c in a] == [c.info for c in b]


def test_bad_index_files_give_one_clear_error(index, tmp_path):
    with pytest.raises(TemplateIndexError, match="not found: .*missing.npz"):
        TemplateIndex.load(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(TemplateIndexError, match="corrupt template index file .*junk.npz"):
        TemplateIndex.load(junk)
    old = tmp_path / "old.npz"
    np.savez(old, format_version=np.array([0]))
    with pytest.raises(TemplateIndexError, match="old.npz has format version 0"):
        TemplateIndex.load(old)


def test_assignments_respect_multiplicities():
    d = distance_matrix("mendeleev")
    # template Ti2O4 (Ti 22 ×2, O 8 ×4) onto Mg2F4: only one admissible assignment
    out = assignments([(22, 2), (8, 4)], [(12, 2), (9, 4)], d)
    assert [m for _, m in out] == [{22: 12, 8: 9}]
    assert assignments([(22, 2), (8, 4)], [(12, 3), (9, 3)], d) == []
    two = assignments([(11, 1), (17, 1)], [(19, 1), (35, 1)], d)
    assert two[0][1] == {11: 19, 17: 35} and two[0][0] < two[1][0]
    naive = assignments([(11, 1), (17, 1)], [(19, 1), (35, 1)], d, en_order=True)
    assert [m for _, m in naive] == [{11: 19, 17: 35}]


@pytest.mark.parametrize("name", [n for n in DISTANCES if n not in ("embedding", "substitution")])
def test_distance_matrices_are_symmetric_with_zero_diagonal(name):
    d = distance_matrix(name)
    assert np.allclose(d, d.T) and np.all(np.diag(d) == 0) and np.all(d >= 0)
    assert d[11, 19] < d[11, 17]  # Na is closer to K than to Cl


def test_cli_builds_an_index_with_its_card(tmp_path):
    from click.testing import CliRunner

    from dao.cli import cli

    src = write_csv(tmp_path / "tiny.csv", small_structures())
    split = write_csv(tmp_path / "split.csv", {"Si": small_structures()["Si"]})
    split.write_text(split.read_text().replace("test-0", "split-0"))  # excluded by structure, not by id
    res = CliRunner().invoke(cli, ["templates", "build", str(src), "--exclude", str(split), "--out",
                                   str(tmp_path / "out"), "--no-progress"])
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "out" / "templates_card.json").read_text())
    assert card["entries"] == 4 and card["sources"][0]["excluded"] == 1 and len(card["sources"][0]["sha256"]) == 64
    assert card["excluded"][0]["path"] == str(split)
    assert len(TemplateIndex.load(tmp_path / "out" / "templates.npz")) == 4
    again = ["templates", "build", str(src), "--out", str(tmp_path / "out"), "--no-progress"]
    res = CliRunner().invoke(cli, again)  # a second build into the same folder: refused, first one intact
    assert res.exit_code != 0 and "not empty" in str(res.exception) + res.output
    assert len(TemplateIndex.load(tmp_path / "out" / "templates.npz")) == 4
    res = CliRunner().invoke(cli, again + ["--overwrite"])
    assert res.exit_code == 0, res.output
    assert len(TemplateIndex.load(tmp_path / "out" / "templates.npz")) == 5  # replaced as a whole


def test_cli_missing_source_is_one_line_error(tmp_path, capsys):
    from dao.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["templates", "build", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o"), "--no-progress"])
    assert exc.value.code == 2
    assert "dao: error:" in capsys.readouterr().err and not (tmp_path / "o" / "templates.npz").exists()


def test_templates_of_a_fraction_of_the_cell_come_as_supercells(index):
    cands = index.propose(parse_formula("Mg4F8"))  # TiO2 (Ti2O4) is half of this cell
    assert [c.info["template_formula"] for c in cands] == ["TiO2"]
    assert cands[0].info["supercell"] == 2 and len(cands[0].structure) == 12
    assert cands[0].structure.composition.reduced_formula == "MgF2"


def test_bundled_default_index_loads_and_proposes():
    index = TemplateIndex.load("default")
    assert len(index) > 30000
    cands = index.propose(parse_formula("KBr"), limit=3)
    assert len(cands) == 3 and all(c.structure.composition.reduced_formula == "KBr" for c in cands)
    assert cands[0].info["template_source"].split("/")[0] in {"mp_20", "mpts_52", "perov_5", "carbon_24", "pretrain"}


def test_vote_sums_the_templates_that_give_the_same_structure(tmp_path):
    structures = small_structures()
    kcl = structures["NaCl"].copy()
    kcl.replace_species({"Na": "K"})
    kcl.scale_lattice(kcl.volume * 1.3)
    index = TemplateIndex.build([write_csv(tmp_path / "c.csv", {"NaCl": structures["NaCl"], "KCl": kcl,
                                                                "CsCl": structures["CsCl"]})])
    plain = index.propose(parse_formula("RbBr"))
    voted = index.with_options(vote=True).propose(parse_formula("RbBr"))
    assert len(plain) == len(voted) == 2  # rock salt (from NaCl or KCl, merged) and CsCl type
    rock = next(c for c in voted if c.info["spacegroup"] == 225)
    sims = sorted(c.info["similarity"] for c in index.propose(parse_formula("RbBr"), limit=8))
    assert rock.prior > rock.info["similarity"] and voted[0].prior >= voted[1].prior
    assert len(sims) == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["embedding", "substitution"])
def test_bundled_element_distances_equal_their_definition(name):
    from dao.templates.elements import CACHED, compute_distance_matrix

    assert name in CACHED
    np.testing.assert_allclose(distance_matrix(name), compute_distance_matrix(name), rtol=1e-12, atol=1e-12)


def test_known_structure_comes_first_and_novel_mode_leaves_it_out(index, tmp_path):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from dao.templates.ranker import TemplateRanker, default_ranker_path

    cscl = small_structures()["CsCl"]
    ranked = index.with_ranker(TemplateRanker.load(default_ranker_path()))
    for idx in (index, ranked):
        known = idx.propose(parse_formula("CsCl"), limit=4)
        assert known[0].info["template_id"] == "test-3" and known[0].info["known"] and known[0].prior == 1.0
        assert StructureMatcher().fit(known[0].structure, cscl)
        assert [c.info["known"] for c in known[1:]] == [False] * (len(known) - 1)
        novel = idx.propose(parse_formula("CsCl"), limit=4, novel=True)
        assert [c.info["template_formula"] for c in novel] == ["NaCl"]  # rock salt CsCl: a new structure
        assert not any(StructureMatcher().fit(c.structure, cscl) for c in novel)
    # a substitution that reproduces a known structure is not new either: KCl's B2 template gives B2 CsCl
    kcl = cscl.copy()
    kcl.replace_species({"Cs": "K"})
    kcl.scale_lattice(kcl.volume * 0.8)
    both = TemplateIndex.build([write_csv(tmp_path / "b2.csv", {"CsCl": cscl, "KCl": kcl})])
    assert both.propose(parse_formula("CsCl"), limit=4)[0].info["template_formula"] == "CsCl"
    assert both.propose(parse_formula("CsCl"), limit=4, novel=True) == []
