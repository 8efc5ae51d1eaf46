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
