"""`dao data download`: verified by sha256, nothing kept on a mismatch, a clear error when offline."""
from __future__ import annotations

import hashlib

import pytest

from dao.errors import DAOError


def test_download_verifies_and_discards_mismatches(tmp_path):
    from dao.data.download import download

    remote = tmp_path / "remote" / "mp_20"
    remote.mkdir(parents=True)
    payload = b"material_id,cif\nmp-1,data_x\n"
    (remote / "train.csv").write_bytes(payload)
    good = {"mp_20": {"train.csv": (len(payload), hashlib.sha256(payload).hexdigest())}}
    base = (tmp_path / "remote").as_uri()
    out = tmp_path / "data"
    [path] = download("mp_20", out, base_url=base, known=good)
    assert path.read_bytes() == payload
    bad = {"mp_20": {"train.csv": (len(payload), "0" * 64)}}
    with pytest.raises(DAOError, match="sha256"):
        download("mp_20", tmp_path / "other", base_url=base, known=bad)
    assert list((tmp_path / "other" / "mp_20").iterdir()) == []  # no partial or wrong file left


def test_download_offline_fails_with_one_clear_line(tmp_path, capsys):
    from dao.cli import main
    from dao.data import download as mod

    mod_base = mod.BASE_URL
    mod.BASE_URL = "http://127.0.0.1:9/nowhere"  # nothing listens on the discard port
    try:
        with pytest.raises(SystemExit) as exc:
            main(["data", "download", "perov_5", "--out", str(tmp_path)])
    finally:
        mod.BASE_URL = mod_base
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "cannot download" in err[0]
    assert not any((tmp_path / "perov_5").iterdir())
