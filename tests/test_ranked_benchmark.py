"""dao benchmark --ranked: the split is removed from the template index, both answers are scored, reruns resume."""
from __future__ import annotations

import json

from dao.cli import main
from dao.formula import parse_formula
from dao.templates import TemplateIndex
from tests.conftest import small_structures, write_csv


def test_ranked_benchmark_guards_the_index_and_scores_both_answers(tmp_path, capsys):
    s = small_structures()
    split = write_csv(tmp_path / "split.csv", {"NaCl": s["NaCl"]})
    # the index holds the split's own structure under another id: only the StructureMatcher guard can drop it
    index_csv = write_csv(tmp_path / "corpus.csv", {"CsCl": s["CsCl"], "NaCl": s["NaCl"]})
    index_csv.write_text(index_csv.read_text().replace("test-", "corpus-"))
    TemplateIndex.build([index_csv]).save(tmp_path / "index.npz")
    unguarded = TemplateIndex.load(tmp_path / "index.npz", ranker=None)
    assert unguarded.propose(parse_formula("NaCl"))[0].info["template_formula"] == "NaCl"  # without the guard: leaked
    out = tmp_path / "bench"
    argv = ["benchmark", "--ranked", "--split", str(split), "--out", str(out), "--templates",
            str(tmp_path / "index.npz"), "--judge", "none", "--candidates", "2", "--no-progress", "--model",
            "default-flow"]
    main(argv)
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["index_entries_after_guard"] == 1  # NaCl matched the split and left; CsCl stays
    assert r["naive_template"]["match_rate"] == 0.0  # CsCl-type NaCl is not rock salt: nothing leaked
    for name in ("ranked", "naive_template"):
        assert (out / name / "summary.json").is_file()
        assert (out / name / "predictions" / "0_0.cif").is_file()
    main(argv)  # rerun: the finished row is not recomputed
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["seconds_per_composition_this_run"] == 0.0
    assert again["naive_template"] == r["naive_template"] and again["ranked"] == r["ranked"]


def test_guard_rows_keeps_the_rest_of_the_split_and_a_rerun_must_keep_its_settings(tmp_path, capsys):
    import pytest
    from pymatgen.core import Lattice, Structure

    from dao.errors import DAOError

    s = small_structures()
    kbr = Structure.from_spacegroup("Fm-3m", Lattice.cubic(6.6), ["K", "Br"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    kbr = kbr.get_primitive_structure()
    split = write_csv(tmp_path / "split.csv", {"NaCl": s["NaCl"], "KBr": kbr})
    corpus = write_csv(tmp_path / "corpus.csv", {"CsCl": s["CsCl"], "NaCl": s["NaCl"], "KBr": kbr})
    corpus.write_text(corpus.read_text().replace("test-", "corpus-"))
    TemplateIndex.build([corpus]).save(tmp_path / "index.npz")
    base = ["benchmark", "--ranked", "--split", str(split), "--templates", str(tmp_path / "index.npz"),
            "--judge", "none", "--candidates", "1", "--no-progress", "--model", "default-flow", "--limit", "1", "-k", "2"]
    runs = {}
    for guard in ("split", "rows"):
        main(base + ["--out", str(tmp_path / guard), "--guard", guard])
        runs[guard] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # the whole split leaves (only CsCl stays) vs only the evaluated NaCl row: KBr stays, a rock-salt template
    assert runs["split"]["index_entries_after_guard"] == 1 and runs["rows"]["index_entries_after_guard"] == 2
    assert runs["split"]["naive_template"]["match_rate"] == 0.0
    assert runs["rows"]["naive_template"]["match_rate"] == 1.0
    assert runs["rows"]["rows"] == 1
    with pytest.raises(DAOError, match="guard differ"):  # resuming into a folder made with other settings
        from dao.ranked_benchmark import run_ranked_benchmark
        from dao.ranking import RankOptions

        run_ranked_benchmark(split, tmp_path / "rows", 2, 1, "default-flow", 0, "cpu",
                             RankOptions(templates=str(tmp_path / "index.npz"), candidates=1), progress=False,
                             guard="split")
    (tmp_path / "rows" / "settings.json").unlink()  # a folder an older DAO wrote: rows but no settings
    with pytest.raises(DAOError, match="without a settings.json"):
        run_ranked_benchmark(split, tmp_path / "rows", 2, 1, "default-flow", 0, "cpu",
                             RankOptions(templates=str(tmp_path / "index.npz"), candidates=1), progress=False,
                             guard="rows")
