"""Bounded cell reduction (dao.cell): degenerate cells are refused or reduced in bounded time, never a hang."""
import signal
import time
from contextlib import contextmanager

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from dao.cell import cell_problem, niggli_reduce, niggli_transform
from dao.crystal import Crystal
from dao.errors import StructureReadError
from dao.prediction import finalize_structure

# a cell DAO-G sampled for U20 (`dao predict U --max-atoms 20 --seed 5002 --model default-flow --steps 2`):
# volume 1.1e-3 Å³ passed the old |det| ≥ 1e-3 check, then pymatgen's Niggli reduction ran for > 120 s
U20_LATTICE = np.array([[0.14224882423877716, -0.33830976486206055, 0.3419466018676758],
                        [-0.7217828035354614, 2.5266008377075195, -1.2200672626495361],
                        [-0.29350659251213074, -2.642651081085205, -2.839078664779663]])


@contextmanager
def time_limit(seconds: float):
    """Fail (instead of hanging the suite) when the block runs longer than ``seconds``."""
    def alarm(*_):
        raise TimeoutError(f"took longer than {seconds} s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_degenerate_sample_is_unusable_with_a_reason_not_a_hang():
    frac = np.random.default_rng(0).random((20, 3))
    with time_limit(5):
        s, reason = finalize_structure(np.full(20, 92), frac, U20_LATTICE)
    assert s is None and "volume per atom" in reason


def test_huge_cell_is_refused_before_reduction():
    s = Structure(Lattice(np.diag([1e6, 3.0, 3.0])), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with time_limit(5):
        with pytest.raises(StructureReadError, match="cell length 1e\\+06 Å exceeds 1000 Å"):
            Crystal.from_structure(s)
        assert np.array_equal(niggli_transform(np.diag([1e6, 3.0, 3.0])), np.eye(3))  # was minutes in pymatgen


@pytest.mark.parametrize("lattice,needle", [
    (np.full((3, 3), np.nan), "non-finite"),
    (np.array([[1.0, 0, 0], [1.0, 0.01, 0], [0, 0, 1.0]]), "volume per atom"),  # flat: 0.005 Å³ per atom
    (np.diag([3.0, 3.0, 0.0]), "zero lattice vector"),
    (np.diag([1e3, 1e3, 1e3]) * 0.5, "volume per atom"),  # 1.25e8 Å³ for 2 atoms
    (np.diag([1e3 + 1, 3.0, 3.0]), "cell length"),
])
def test_cell_problems_are_named(lattice, needle):
    assert needle in cell_problem(lattice, 2)


def test_skewed_basis_of_a_good_lattice_is_accepted():
    skewed = np.array([[3.0, 0, 0], [300.0, 3.0, 0], [0, 0, 3.0]])  # vectors 1 and 2 within 0.6° of parallel
    assert cell_problem(skewed, 1) is None
    reduced = niggli_reduce(Structure(Lattice(skewed), ["Na"], [[0, 0, 0]]))
    assert np.allclose(reduced.lattice.abc, 3.0) and np.allclose(reduced.lattice.angles, 90.0)


def test_skewed_cell_is_lll_reduced_first_and_matches_pymatgen():
    # simple cubic 3 Å in a skewed basis: pymatgen's search on this basis is ~2.5e6 points, on its LLL basis 27
    skewed = np.array([[3.0, 0, 0], [0, 3.0, 0], [30.0, 30.0, 3.0]])
    s = Structure(Lattice(skewed), ["Na", "Cl"], [[0.1, 0.2, 0.3], [0.6, 0.7, 0.8]])
    reduced = niggli_reduce(s)
    expected = s.get_reduced_structure("niggli")
    assert np.allclose(reduced.lattice.abc, expected.lattice.abc) and np.allclose(reduced.lattice.abc, 3.0)
    assert abs(reduced.volume - s.volume) < 1e-6


def test_long_thin_sane_cell_stays_lll_reduced_in_bounded_time():
    s = Structure(Lattice(np.diag([999.0, 2.0, 2.0])), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    t = time.perf_counter()
    with time_limit(10):
        reduced = niggli_reduce(s)
    assert time.perf_counter() - t < 2 and sorted(reduced.lattice.abc) == pytest.approx([2.0, 2.0, 999.0])


def test_ordinary_cells_reduce_exactly_as_before():
    s = Structure(Lattice([[4.0, 0, 0], [2.0, 3.5, 0], [1.0, 1.0, 5.0]]), ["Na", "Cl"], [[0, 0, 0], [0.4, 0.5, 0.6]])
    old = s.get_reduced_structure("niggli")
    new = niggli_reduce(s)
    assert np.allclose(new.lattice.matrix, old.lattice.matrix) and np.allclose(new.frac_coords, old.frac_coords)
