"""report.html of prediction folders (`dao predict`, with and without --xrd) and of `dao evaluate`: one
self-contained page with a section per structure, escaped, no external reference; rendered by headless
Chromium when it is installed."""
from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

from dao.cli import main
from dao.errors import DAOError
from dao.xrd import check_pattern
from tests.test_xrd import measured, tio2_polymorphs, write_xy


class _Refs(HTMLParser):
    """Every src/href value and the ids of sections, images and tables seen."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.sections: list[str] = []
        self.images = 0
        self.tables = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.refs += [v for k, v in attrs if k in ("src", "href") and v is not None]
        if tag == "section":
            self.sections.append(a.get("id", ""))
        self.images += tag == "img"
        self.tables += tag == "table"


def parse(html_text: str) -> _Refs:
    p = _Refs()
    p.feed(html_text)
    return p


def assert_offline(html_text: str) -> _Refs:
    p = parse(html_text)
    for ref in p.refs:
        assert ref.startswith("data:image/png;base64,") or not re.match(r"^([a-z]+:|//)", ref), ref
    assert "http://" not in html_text and "https://" not in html_text
    assert not re.search(r"""(src|href)=["']//""", html_text)
    return p


@pytest.fixture(scope="module")
def ranked_folder(tmp_path_factory):
    """`dao predict TiO2 --xrd anatase.xy` with an untrained tiny generator, judge none and a template index
    holding rutile, anatase and brookite (the measured pattern decides among them)."""
    import torch

    from dao.models.checkpoint import save_model
    from dao.models.generator import DAOGenerator, GeneratorConfig
    from dao.nn.crysformer import CrysformerConfig
    from dao.templates import TemplateIndex

    tmp = tmp_path_factory.mktemp("report")
    torch.manual_seed(0)
    cfg = GeneratorConfig(model=CrysformerConfig(hidden=32, layers=2, heads=4, num_freqs=8, time_dim=16), max_atoms=12)
    save_model(tmp / "tiny.pt", DAOGenerator(cfg).eval(), {"note": "untrained test model"})
    poly = tio2_polymorphs()
    with open(tmp / "tio2.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["material_id", "e_above_hull", "cif"])
        w.writerows([name, 0.0, poly[name].to(fmt="cif")] for name in ("rutile", "brookite", "anatase"))
    TemplateIndex.build([tmp / "tio2.csv"], max_atoms=52).save(tmp / "index.npz")
    xy = write_xy(tmp / "anatase <1>.xy", *measured(poly["anatase"]))
    out = tmp / "pred"
    main(["predict", "TiO2", "-n", "3", "--model", str(tmp / "tiny.pt"), "--steps", "2", "--judge", "none",
          "--templates", str(tmp / "index.npz"), "--candidates", "1", "--no-progress", "--xrd", str(xy),
          "--out", str(out)])
    return out


def test_prediction_report_sections_and_xrd_ranking(ranked_folder):
    summary = json.loads((ranked_folder / "summary.json").read_text())
    recs = summary["samples"]
    assert recs[0]["xrd_score"] >= 0.6 and recs[0]["source_info"]["template_id"] == "anatase"
    assert "1 of" in summary["xrd"]["verdict"] and summary["xrd"]["wavelength"] == pytest.approx(1.54184)
    text = (ranked_folder / "report.html").read_text()
    p = assert_offline(text)
    assert p.sections == [r["name"] for r in recs]
    assert p.images == 3 * len(recs)  # cell, simulated pattern, overlay on the measured one
    for r in recs:
        assert f'href="{r["cif"]}"' in text and (ranked_folder / r["cif"]).is_file()
        assert r["space_group"]["symbol"] in text
    assert 'href="samples.extxyz"' in text and "anatase &lt;1&gt;.xy" in text  # escaped


def test_unranked_prediction_report_and_bad_xrd(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "raw"
    main(["predict", "NaCl", "--no-rank", "-n", "1", "--model", str(tiny_checkpoint), "--steps", "2",
          "--no-progress", "--out", str(out)])
    p = assert_offline((out / "report.html").read_text())
    assert len(p.sections) + ("unusable samples" in (out / "report.html").read_text()) >= 1
    bad = tmp_path / "flat.xy"
    write_xy(bad, np.linspace(10, 80, 200), np.full(200, 10.0))
    for extra, needle in (([str(bad)], "no peaks"), ([str(bad), "--xrd-wavelength", "0"], "wavelength")):
        target = tmp_path / f"bad{len(extra)}"
        with pytest.raises(SystemExit) as exc:
            main(["predict", "NaCl", "--model", str(tiny_checkpoint), "--xrd", *extra[:1], *extra[1:],
                  "--out", str(target)])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and needle in err[0] and not target.exists()


def test_report_survives_a_structure_without_reflections(tmp_path):
    from pymatgen.core import Lattice, Structure

    from dao.report.prediction import write_prediction_report
    from dao.xrd import compare

    tiny = Structure(Lattice.cubic(0.8), ["H"], [[0, 0, 0]])  # first reflection at 2θ ≈ 149°
    summary = {"formula": "H", "samples": [{"name": "H_000", "cif": "H_000.cif", "formula": "H"},
                                           {"name": "H_001", "error": "degenerate <cell>"}]}
    text = write_prediction_report(tmp_path, summary, [tiny]).read_text()
    assert parse(text).sections == ["H_000"] and "degenerate &lt;cell&gt;" in text
    x, y = measured(tio2_polymorphs()["rutile"])
    assert compare(check_pattern(x, y, 1.54184), [("tiny", tiny)])[0].score == 0.0


def test_evaluation_report_has_rows_and_reasons(tmp_path):
    from dao.evaluate import evaluate, write_report

    poly = tio2_polymorphs()
    res = evaluate({0: [poly["rutile"]], 1: [poly["rutile"]]}, [poly["rutile"], poly["anatase"]], progress=False)
    (tmp_path / "ev" / "predictions").mkdir(parents=True)  # dao benchmark's layout: rows link their samples
    poly["rutile"].to(filename=str(tmp_path / "ev" / "predictions" / "1_0.cif"))
    paths = write_report(res, tmp_path / "ev")
    text = paths["report_html"].read_text()
    p = assert_offline(text)
    assert p.images == 2 and p.tables == 3
    assert "no_match" in text and text.count("<tr>") >= 2 + len(res.records)
    assert 'href="per_structure.csv"' in text and 'href="predictions/1_0.cif"' in text


def test_links_must_be_relative():
    from dao.report.html import link

    for bad in ("https://cdn.example/x.js", "//cdn/x", "file:///etc/passwd", "javascript:alert(1)"):
        with pytest.raises(ValueError):
            link(bad, "x")
    with pytest.raises(DAOError):
        from dao.xrd import wavelength_of

        wavelength_of(0.0)


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="headless Chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(ranked_folder, tmp_path):
    url = (ranked_folder / "report.html").resolve().as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", *flags, f"--screenshot={shot}", "--window-size=1000,1400", url],
                   capture_output=True, timeout=60, check=True)
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    assert pixels.shape[0] >= 1000 and pixels.std() > 0.05  # not blank: text, tables and pictures drawn
    assert (pixels.reshape(-1, 3).std(axis=1) > 0.1).mean() > 0.001  # coloured: atoms, links, plot lines
    assert (pixels.mean(axis=2) < 0.5).mean() > 0.005  # dark: text, table rules, axes
    dom = subprocess.run(["chromium", *flags, "--dump-dom", url], capture_output=True, timeout=60, check=True,
                         text=True).stdout
    p = parse(dom)
    n = json.loads((ranked_folder / "summary.json").read_text())["num_written"]
    assert len(p.sections) == n >= 1 and p.images == 3 * n and p.tables == n + 1
    assert "DAO prediction: TiO2" in dom
