"""A new data source is one place: a made-up JSON structures format registered in the test through
:func:`dao.data.sources.reader` only is read by ``read_any`` (training, ``dao relax`` inputs) and by the
CrysDB builder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from dao.data.records import Record, label_value
from dao.data.sources import READERS, reader


def _parse(entry: dict) -> Record:
    from pymatgen.core import Structure

    return Record(entry["name"], Structure.from_dict(entry["structure"]), {"e_above_hull": label_value(entry["ehull"])})


def json_entries(path: Path):
    yield from json.loads(Path(path).read_text())


@pytest.fixture
def json_source(tmp_path, structures):
    reader(".structs.json", parse=_parse)(json_entries)
    path = tmp_path / "mine.structs.json"
    path.write_text(json.dumps([{"name": f"j-{k}", "ehull": 0.01 * i, "structure": s.as_dict()}
                                for i, (k, s) in enumerate(structures.items())]))
    yield path
    READERS.pop(".structs.json")


def test_registered_format_is_read_by_read_any_and_the_training_loader(json_source, structures):
    from dao.data.readers import read_any, read_inputs
    from dao.data.dataset import collate

    crystals, skipped = read_any(json_source)
    assert skipped == [] and len(crystals) == len(structures)
    assert crystals[1].meta["id"] == "j-" + list(structures)[1]
    assert crystals[1].meta["e_above_hull"] == pytest.approx(0.01)
    batch = collate(crystals)
    assert batch.num_crystals == len(structures)
    items, errors = read_inputs([json_source])
    assert errors == [] and [name for name, _ in items] == [f"j-{k}" for k in structures]


def test_registered_format_feeds_a_crysdb_build(json_source, tmp_path, structures):
    from dao.data.crysdb import BuildConfig, build_crysdb, iter_crysdb

    report = build_crysdb([json_source], tmp_path / "db", config=BuildConfig(partitions=1, min_atoms=1))
    assert report.totals["read"] == len(structures) and report.totals["parse_failed"] == 0
    ids = {r["id"] for r in iter_crysdb(tmp_path / "db")}
    assert ids and ids <= {f"j-{k}" for k in structures}
