"""Output folders (dao.structure_io): locked, refused when non-empty unless overwrite, replaced as a whole."""
import subprocess
import sys

import pytest

from dao.errors import DAOError
from dao.structure_io import claim_output_dir, staged_output_dir


def _write(out, files):
    with staged_output_dir(out, overwrite=True) as tmp:
        for name in files:
            (tmp / name).write_text(name)


def test_rerun_replaces_the_whole_folder_never_a_mix(tmp_path):
    out = tmp_path / "run"
    _write(out, ["a_000.cif", "a_001.cif", "summary.json"])
    _write(out, ["a_000.cif", "summary.json"])  # the second run made fewer files
    assert sorted(p.name for p in out.iterdir()) == ["a_000.cif", "summary.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".old"))]  # no staging left


def test_non_empty_folder_is_refused_without_overwrite(tmp_path):
    out = tmp_path / "run"
    _write(out, ["summary.json"])
    with pytest.raises(DAOError, match="not empty; use --overwrite"):
        with staged_output_dir(out):
            pass
    with claim_output_dir(out, resume=True):  # resumable commands continue in their folder
        pass
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "empty", ["x"])  # an empty folder is fine


def test_failed_run_leaves_the_old_folder_untouched(tmp_path):
    out = tmp_path / "run"
    _write(out, ["old.cif"])
    with pytest.raises(RuntimeError):
        with staged_output_dir(out, overwrite=True) as tmp:
            (tmp / "new.cif").write_text("x")
            raise RuntimeError("boom")
    assert [p.name for p in out.iterdir()] == ["old.cif"]
    with pytest.raises(RuntimeError):
        with staged_output_dir(tmp_path / "fresh") as tmp:
            raise RuntimeError("boom")
    assert not (tmp_path / "fresh").exists()  # no partial output


def test_concurrent_run_fails_clearly(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from dao.structure_io import claim_output_dir\n"
        f"with claim_output_dir({str(out)!r}):\n    print('held', flush=True); time.sleep(30)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DAOError, match="in use by another dao run"):
            with staged_output_dir(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    with claim_output_dir(out):  # released when the holder died
        with staged_output_dir(out) as tmp:  # re-entrant within a process
            (tmp / "x").write_text("x")
    assert (out / "x").exists()


def test_cli_predict_refuses_a_non_empty_out_before_any_work(tmp_path, capsys):
    from dao.cli import main

    out = tmp_path / "p"
    out.mkdir()
    (out / "old.cif").write_text("x")
    with pytest.raises(SystemExit) as info:
        main(["predict", "NaCl", "--out", str(out), "--model", str(tmp_path / "missing.pt")])
    assert info.value.code == 2 and [p.name for p in out.iterdir()] == ["old.cif"]
    assert "is not empty; use --overwrite" in capsys.readouterr().err
