"""DAOCalculator (DAO-P at t = 0 in ASE): forces and stress against finite differences, invariances,
consistency with `dao energy`, and relaxations (convergence on a known energy, the runaway guard)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dao.calculator import DAOCalculator
from dao.crystal import Crystal, CrystalBatch
from dao.relax import relax_atoms
from tests.conftest import small_structures


@pytest.fixture
def p_model(tiny_energy_model):
    with torch.no_grad():  # a less trivial random landscape than the default init
        gen = torch.Generator().manual_seed(0)
        for p in tiny_energy_model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return tiny_energy_model


def rattled_atoms(name="TiO2", seed=0):
    rng = np.random.default_rng(seed)
    atoms = Crystal.from_structure(small_structures()[name]).to_atoms()
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.03 * rng.standard_normal((3, 3))), scale_atoms=True)
    atoms.positions += 0.05 * rng.standard_normal(atoms.positions.shape)
    return atoms


def test_forces_are_the_negative_energy_gradient(p_model):
    atoms = rattled_atoms()
    atoms.calc = DAOCalculator(p_model)
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 1e-4  # a non-trivial check
    h = 1e-5
    for i in range(len(atoms)):
        for k in range(3):
            pos = atoms.positions.copy()
            pos[i, k] += h
            atoms.positions = pos
            e_plus = atoms.get_potential_energy()
            pos[i, k] -= 2 * h
            atoms.positions = pos
            e_minus = atoms.get_potential_energy()
            pos[i, k] += h
            atoms.positions = pos
            assert abs(-(e_plus - e_minus) / (2 * h) - forces[i, k]) < 1e-7 + 1e-5 * abs(forces[i, k])


def test_stress_is_the_strain_derivative_over_volume(p_model):
    atoms = rattled_atoms("ZnO", seed=1)
    atoms.calc = DAOCalculator(p_model)
    stress = atoms.get_stress()  # Voigt xx, yy, zz, yz, xz, xy
    cell0, volume = atoms.cell.array.copy(), atoms.get_volume()
    h = 1e-6
    for v, (i, j) in enumerate([(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]):
        energies = []
        for sign in (1, -1):
            eps = np.zeros((3, 3))
            eps[i, j] = eps[j, i] = sign * h  # symmetric strain: ε_ij = ε_ji
            strained = atoms.copy()
            strained.calc = atoms.calc
            strained.set_cell(cell0 @ (np.eye(3) + eps), scale_atoms=True)
            energies.append(strained.get_potential_energy())
        fd = (energies[0] - energies[1]) / (2 * h) / volume / (1 if i == j else 2)
        assert abs(fd - stress[v]) < 1e-8 + 1e-5 * abs(stress[v]), (v, fd, stress[v])
    # the ASE sign convention: ASE's own numerical stress agrees
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(atoms.calc.calculate_numerical_stress(atoms, d=1e-6), stress, atol=1e-8, rtol=1e-5)


def test_energy_matches_dao_energy_and_is_invariant(p_model):
    from dao.models.energy import predict_energies

    structure = small_structures()["TiO2"]
    crystal = Crystal.from_structure(structure)
    per_atom = float(predict_energies(p_model.double(), [crystal])[0])
    atoms = crystal.to_atoms()
    calc = DAOCalculator(p_model)
    atoms.calc = calc
    assert atoms.get_potential_energy() == pytest.approx(per_atom * len(atoms), rel=1e-9, abs=1e-9)
    forces, stress = atoms.get_forces(), atoms.get_stress()
    # another basis of the same lattice: the calculator works in the Niggli basis, as the model was trained
    other = atoms.copy()
    other.set_cell(np.array([[1, 1, 0], [0, 1, 0], [1, 0, 1]]) @ atoms.cell.array, scale_atoms=False)
    other.calc = DAOCalculator(p_model)
    assert other.get_potential_energy() == pytest.approx(atoms.get_potential_energy(), rel=1e-9, abs=1e-9)
    np.testing.assert_allclose(other.get_forces(), forces, atol=1e-9)
    np.testing.assert_allclose(other.get_stress(), stress, atol=1e-9)
    # rotations and permutations
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell.array @ q.T, scale_atoms=True)
    rotated.calc = DAOCalculator(p_model)
    assert rotated.get_potential_energy() == pytest.approx(atoms.get_potential_energy(), rel=1e-9, abs=1e-9)
    np.testing.assert_allclose(rotated.get_forces(), forces @ q.T, atol=1e-9)
    perm = atoms[[3, 0, 5, 1, 4, 2]]
    perm.calc = DAOCalculator(p_model)
    assert perm.get_potential_energy() == pytest.approx(atoms.get_potential_energy(), rel=1e-9, abs=1e-9)
    np.testing.assert_allclose(perm.get_forces(), forces[[3, 0, 5, 1, 4, 2]], atol=1e-9)


class SmoothEnergy(nn.Module):
    """A DAO-P stand-in with a known smooth energy (per crystal): 0.05‖LLᵀ − G*‖² + ½Σ_ij Σ_axes (1 + cos 2πΔf).
    For two atoms its minimum is LLᵀ = G* with the second atom at Δf = (½, ½, ½)."""

    def __init__(self, gram: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("gram", gram)
        self.unused = nn.Parameter(torch.zeros(()))

    def energy_per_atom(self, batch: CrystalBatch) -> torch.Tensor:
        assert batch.num_crystals == 1
        lat = batch.lattice[0]
        e = 0.05 * ((lat @ lat.T - self.gram) ** 2).sum()
        d = batch.frac[:, None, :] - batch.frac[None, :, :]
        e = e + 0.5 * (1 + torch.cos(2 * math.pi * d)).sum()
        return (e / batch.frac.shape[0]).reshape(1)


class RunawayEnergy(nn.Module):
    """Energy that keeps falling as the cell grows: a relaxation must be stopped by the volume guard."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))

    def energy_per_atom(self, batch: CrystalBatch) -> torch.Tensor:
        return 40.0 / torch.linalg.det(batch.lattice).abs()  # eV/atom, convex and decreasing in the volume


def test_relaxation_converges_on_a_known_energy():
    from ase import Atoms

    atoms = Atoms("NaCl", scaled_positions=[[0.02, 0.0, 0.01], [0.42, 0.55, 0.47]],
                  cell=[[4.3, 0.1, 0.0], [0.2, 3.8, 0.1], [0.0, 0.15, 4.2]], pbc=True)
    calc = DAOCalculator(SmoothEnergy(16.0 * torch.eye(3, dtype=torch.float64)), niggli=False)
    relaxed, rec = relax_atoms(atoms, calc, steps=300, fmax=1e-3)
    assert rec["status"] == "converged", rec
    assert rec["max_force"] < 1e-3 and rec["energy_final"] < rec["energy_initial"]
    cell = relaxed.cell.array
    np.testing.assert_allclose(cell @ cell.T, 16.0 * np.eye(3), atol=0.05)
    d = relaxed.get_scaled_positions(wrap=False)[1] - relaxed.get_scaled_positions(wrap=False)[0]
    np.testing.assert_allclose((d - 0.5 + 0.5) % 1.0 - 0.5, 0.0, atol=0.01)
    assert atoms.get_volume() == pytest.approx(4.3 * 3.8 * 4.2, rel=0.05)  # the input is not modified


def test_relaxation_guard_stops_an_exploding_cell():
    atoms = rattled_atoms("NaCl")
    relaxed, rec = relax_atoms(atoms, DAOCalculator(RunawayEnergy(), niggli=False), steps=500, fmax=1e-4)
    assert rec["status"] == "aborted" and "volume changed" in rec["reason"]
    assert 1.0 < relaxed.get_volume() / atoms.get_volume() <= 3.0
    assert np.isfinite(relaxed.positions).all() and math.isfinite(rec["energy_final"])


def test_relaxation_with_a_random_dao_p_stays_finite(p_model):
    relaxed, rec = relax_atoms(rattled_atoms("CsCl"), DAOCalculator(p_model), steps=15, fmax=0.01)
    assert rec["status"] in {"converged", "not_converged"} and rec["steps"] <= 15  # no guard had to fire
    assert rec["energy_final"] < rec["energy_initial"]  # and it went downhill
    assert all(math.isfinite(rec[k]) for k in ("energy_initial", "energy_final", "volume_final", "max_force", "max_stress"))
    assert 1 / 3 <= rec["volume_final"] / rec["volume_initial"] <= 3


def test_niggli_transform_is_an_integer_unimodular_basis_change_shared_without_a_cycle():
    import subprocess
    import sys

    from dao.calculator import niggli_transform
    from dao.cell import niggli_transform as cell_niggli

    assert niggli_transform is cell_niggli
    skewed = np.array([[3.0, 0.0, 0.0], [2.9, 3.1, 0.0], [0.4, 0.3, 4.0]])
    op = niggli_transform(skewed)
    assert np.array_equal(op, np.rint(op)) and abs(abs(np.linalg.det(op)) - 1) < 1e-9
    reduced = op @ skewed
    assert np.linalg.norm(reduced, axis=1).max() < np.linalg.norm(skewed, axis=1).max()
    np.testing.assert_array_equal(niggli_transform(np.zeros((3, 3))), np.eye(3))  # degenerate: identity
    # the potentials no longer reach into the calculator for it
    code = "import sys, dao.potentials; assert 'dao.calculator' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
