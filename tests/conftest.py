"""Shared fixtures: tiny crystals made with pymatgen, a tiny CSV in DiffCSP format, a tiny DAO-G."""
from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # 2-core machines: keep tests from oversubscribing


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DAO_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "dao_cache"))


def small_structures():
    from pymatgen.core import Lattice, Structure

    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])
    tio2 = Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.59, 2.96), ["Ti", "O"], [[0, 0, 0], [0.305, 0.305, 0]])
    cscl = Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    zno = Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]])
    return {"NaCl": nacl.get_primitive_structure(), "Si": si.get_primitive_structure(), "TiO2": tio2,
            "CsCl": cscl, "ZnO": zno}


@pytest.fixture
def structures():
    return small_structures()


def write_csv(path: Path, structures: dict, ehull: float | None = 0.0) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["material_id", "pretty_formula", "e_above_hull", "cif"])
        w.writeheader()
        for i, (name, s) in enumerate(structures.items()):
            w.writerow({"material_id": f"test-{i}", "pretty_formula": name,
                        "e_above_hull": "" if ehull is None else ehull, "cif": s.to(fmt="cif")})
    return path


@pytest.fixture
def tiny_csv(tmp_path, structures):
    return write_csv(tmp_path / "tiny.csv.gz", structures)


@pytest.fixture
def tiny_index(tiny_csv, tmp_path):
    """A template index file of the small structures."""
    from dao.templates import TemplateIndex

    path = tmp_path / "tiny_index.npz"
    TemplateIndex.build([tiny_csv], max_atoms=52).save(path)
    return path


@pytest.fixture
def tiny_generator():
    from dao.models.generator import DAOGenerator, GeneratorConfig
    from dao.nn.crysformer import CrysformerConfig

    torch.manual_seed(0)
    cfg = GeneratorConfig(model=CrysformerConfig(hidden=32, layers=2, heads=4, num_freqs=8, time_dim=16), max_atoms=12)
    return DAOGenerator(cfg).eval()


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_generator):
    from dao.models.checkpoint import save_model

    path = tmp_path / "tiny_model.pt"
    save_model(path, tiny_generator, {"note": "untrained test model"})
    return path


def shared_data_dir() -> Path | None:
    p = Path(os.environ.get("DAO_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
    return p if p.is_dir() else None


def tiny_energy_config(**diffusion):
    from dao.diffusion.processes import DiffusionConfig
    from dao.models.energy import EnergyConfig, EnergyHeadConfig
    from dao.nn.crysformer import CrysformerConfig

    return EnergyConfig(model=CrysformerConfig(hidden=32, layers=2, heads=4, num_freqs=8, time_dim=16),
                        process=DiffusionConfig(**diffusion), max_atoms=12,
                        energy=EnergyHeadConfig(mean=0.05, std=0.04, num_labels=5))


@pytest.fixture
def tiny_energy_model():
    """An untrained tiny DAO-P (same diffusion schedule as ``tiny_generator``)."""
    from dao.models.energy import DAOEnergyModel

    torch.manual_seed(1)
    return DAOEnergyModel(tiny_energy_config()).eval()


@pytest.fixture
def tiny_energy_checkpoint(tmp_path, tiny_energy_model):
    from dao.models.checkpoint import save_model

    path = tmp_path / "tiny_energy.pt"
    save_model(path, tiny_energy_model, {"note": "untrained test model"})
    return path
