"""Outputs are moved into place only when everything succeeded: tested with a failure injected after the
command has started writing: the output folder never holds a partial run, and an earlier run's folder
survives a failed ``--overwrite`` rerun untouched."""
from __future__ import annotations

import functools
import pytest

from tests.conftest import small_structures as _small_structures

small_structures = functools.cache(_small_structures)  # building them (space groups) takes seconds


class Boom(RuntimeError):
    pass


def fail_after(monkeypatch, module, name: str, calls: int) -> list:
    """Make ``module.name`` raise on its ``calls``-th call (the earlier calls write as usual)."""
    real = getattr(module, name)
    seen = []

    def writer(*args, **kwargs):
        seen.append(args)
        if len(seen) >= calls:
            raise Boom(f"injected failure in {name} #{len(seen)}")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, writer)
    return seen


def no_staging_left(folder) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith((".tmp", ".old", ".lock"))]


def test_relax_failing_after_writing_cifs_leaves_no_output(tmp_path, monkeypatch, tiny_energy_checkpoint):
    import dao.structure_io
    from dao.relax import run_relax

    cifs = []
    for name in ("NaCl", "TiO2"):
        cifs.append(tmp_path / f"{name}.cif")
        cifs[-1].write_text(small_structures()[name].to(fmt="cif"))
    seen = fail_after(monkeypatch, dao.structure_io, "write_json", 1)  # summary.json: after both CIFs
    out = tmp_path / "relaxed"
    with pytest.raises(Boom):
        run_relax(cifs, str(tiny_energy_checkpoint), out, steps=2, trajectory_every=1)
    assert seen and not out.exists() and no_staging_left(tmp_path)


def test_predict_failing_midway_keeps_the_earlier_run_whole(tmp_path, monkeypatch, tiny_checkpoint):
    import dao.prediction
    from dao.cli import main

    out = tmp_path / "pred"
    args = ["predict", "NaCl", "--model", str(tiny_checkpoint), "--no-rank", "-n", "2", "--steps", "2",
            "--out", str(out), "--device", "cpu", "--no-progress"]
    main(args)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "summary.json" in before and any(name.endswith(".cif") for name in before)
    seen = fail_after(monkeypatch, dao.prediction, "write_cif", 2)  # the second structure's CIF
    with pytest.raises(Boom):
        main([*args, "--seed", "7", "--overwrite"])
    assert len(seen) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched, no file of the failed run
    assert no_staging_left(tmp_path)
    fresh = tmp_path / "fresh"
    with pytest.raises(Boom):
        main([*args[:-5], "--out", str(fresh), "--device", "cpu", "--no-progress"])
    assert not fresh.exists() and no_staging_left(tmp_path)
