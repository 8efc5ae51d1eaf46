"""Property-based fuzzing of every user input: formulas, cells, checkpoints, configs and ``--seed``.

Each input either works or fails with a DAOError (one line at the CLI), never another exception or a hang.
"""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dao.errors import CheckpointError, ConfigError, DAOError, FormulaError
from dao.formula import parse_formula
from tests.test_cell import time_limit

FAST = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
SYMBOLS = ["H", "He", "Li", "C", "N", "O", "Na", "Cl", "Fe", "Sr", "Ti", "Cs", "V", "Sb", "U", "Es"]


@st.composite
def built_formulas(draw):
    """A formula text built from known groups, and the element counts it must parse to."""
    counts: dict[str, int] = {}
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        group = draw(st.lists(st.tuples(st.sampled_from(SYMBOLS), st.integers(1, 12)), min_size=1, max_size=3))
        mult = draw(st.integers(1, 4))
        text = "".join(el + (str(n) if n > 1 or draw(st.booleans()) else "") for el, n in group)
        if mult > 1 or draw(st.booleans()):
            text = draw(st.sampled_from(["({}){}", "[{}]{}"])).format(text, mult if mult > 1 else "")
        for el, n in group:
            counts[el] = counts.get(el, 0) + n * mult
        parts.append(text)
    return draw(st.sampled_from(["", " "])).join(parts), counts


@FAST
@given(built_formulas())
def test_built_formulas_parse_to_the_counts_they_were_built_from(case):
    text, counts = case
    assert dict(parse_formula(text).counts) == counts


@FAST
@given(st.one_of(st.text(max_size=30),
                 st.text(alphabet="NaClFeO()[]0123456789. e-+@²２¹DT\t", max_size=30)))
def test_any_text_parses_or_is_a_formula_error(text):
    try:
        comp = parse_formula(text)
    except FormulaError:
        return
    assert comp.num_atoms >= 1 and all(n >= 1 for _, n in comp.counts)
    assert all(ch.isascii() for ch in text.strip())  # anything non-ASCII is refused


finite = st.floats(-50, 50, allow_nan=False)
wild = st.one_of(finite, st.sampled_from([np.nan, np.inf, -np.inf, 1e6, -1e6, 1e-9, 0.0, 1e300]))


@FAST
@given(st.lists(wild, min_size=9, max_size=9), st.integers(1, 12), st.data())
def test_any_cell_is_finalized_or_refused_quickly(lattice, n, data):
    from pymatgen.core import Lattice, Structure

    from dao.crystal import Crystal
    from dao.prediction import finalize_structure

    lat = np.array(lattice).reshape(3, 3)
    frac = np.array(data.draw(st.lists(st.floats(-2, 2, allow_nan=False), min_size=3 * n, max_size=3 * n))).reshape(n, 3)
    with time_limit(10):
        s, reason = finalize_structure(np.full(n, 11), frac, lat)
        assert (s is None) != (reason is None)
        if np.all(np.isfinite(lat)) and abs(np.linalg.det(lat)) > 0:
            try:
                Crystal.from_structure(Structure(Lattice(lat), ["Na"] * n, frac))
            except DAOError:
                pass


@FAST
@given(st.lists(wild, min_size=9, max_size=9), st.integers(1, 6), st.data())
def test_any_input_structure_is_read_physical_or_refused_quickly(lattice, n, data):
    """A structure read from a file becomes a Crystal with atoms ≥ MIN_INPUT_DISTANCE apart (periodic images
    included) and a positive volume, or a StructureReadError; never another exception or a hang."""
    from pymatgen.core import Lattice, Structure

    from dao.constants import MIN_INPUT_DISTANCE
    from dao.data.records import Record
    from dao.errors import StructureReadError

    frac = data.draw(st.lists(st.floats(-2, 2, allow_nan=False), min_size=3 * n, max_size=3 * n))
    if data.draw(st.booleans()):  # a near-duplicate atom: the case files get wrong most often
        frac[-3:] = [x + data.draw(st.floats(0, 0.05)) for x in frac[:3]]
    structure = Structure(Lattice(np.array(lattice).reshape(3, 3)), ["Na"] * n, np.array(frac).reshape(n, 3))
    with time_limit(10):
        try:
            crystal = Record("x", structure).to_crystal()
        except StructureReadError:
            return
    assert crystal.min_distance() >= MIN_INPUT_DISTANCE and crystal.volume > 0


@pytest.fixture(scope="module")
def tiny_ckpt_dict():
    from dao.models.generator import DAOGenerator, GeneratorConfig
    from dao.nn.crysformer import CrysformerConfig

    torch.manual_seed(0)
    model = DAOGenerator(GeneratorConfig(model=CrysformerConfig(hidden=8, layers=1, heads=2, num_freqs=2, time_dim=8),
                                         max_atoms=6))
    import tempfile
    from pathlib import Path

    from dao.models.checkpoint import save_model

    with tempfile.TemporaryDirectory() as d:
        save_model(Path(d) / "m.pt", model)
        return torch.load(Path(d) / "m.pt", weights_only=True)


junk = st.one_of(st.none(), st.integers(-3, 10**6), st.floats(allow_nan=True), st.text(max_size=5),
                 st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=3))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.data())
def test_corrupt_checkpoints_are_checkpoint_errors(tmp_path_factory, tiny_ckpt_dict, data):
    from dao.models.checkpoint import load_generator

    ckpt = {k: (dict(v) if isinstance(v, dict) else v) for k, v in tiny_ckpt_dict.items()}
    target = data.draw(st.sampled_from(["top", "config", "state_dict", "bytes"]))
    path = tmp_path_factory.mktemp("ck") / "m.pt"
    if target == "bytes":
        torch.save(ckpt, path)
        raw = bytearray(path.read_bytes())
        cut = data.draw(st.integers(0, len(raw) - 1))
        path.write_bytes(bytes(raw[:cut]) if data.draw(st.booleans()) else bytes(raw[:cut]) + b"\x00junk" + bytes(raw[cut + 5:]))
    else:
        where = ckpt if target == "top" else ckpt[target]
        key = data.draw(st.sampled_from(sorted(where)))
        if data.draw(st.booleans()):
            del where[key]
        else:
            where[key] = torch.zeros(2) if target == "state_dict" and data.draw(st.booleans()) else data.draw(junk)
        torch.save(ckpt, path)
    try:
        load_generator(path)
    except CheckpointError:
        pass


@FAST
@given(st.dictionaries(st.sampled_from(["lr", "batch_size", "max_epochs", "seed", "nope", "ema_decay", "warmup_steps"]),
                       junk, max_size=4))
def test_random_train_configs_are_valid_or_config_errors(d):
    from dao.train_config import TrainConfig

    try:
        TrainConfig.from_dict(d)
    except ConfigError:
        pass


@FAST
@given(st.dictionaries(st.sampled_from(["method", "model", "max_atoms", "diffusion", "flow", "x"]),
                       st.one_of(junk, st.sampled_from(["flow", "diffusion"]),
                                 st.dictionaries(st.sampled_from(["hidden", "layers", "num_steps", "z"]), junk,
                                                 max_size=2)), max_size=4))
def test_random_generator_configs_are_valid_or_config_errors(d):
    from dao.models.generator import GeneratorConfig

    try:
        GeneratorConfig.from_dict(d)
    except ConfigError:
        pass


@pytest.mark.parametrize("command", [["predict", "NaCl"], ["benchmark", "--split", "x.csv", "--out", "o"],
                                     ["train", "generator", "--data", "x", "--out", "o"],
                                     ["train", "property", "--data", "x", "--target", "t", "--out", "o"],
                                     ["tc", "NaCl"], ["data", "tc-augment"]])
@pytest.mark.parametrize("seed", ["99999999999999999999999", "-1", str(2**63)])
def test_out_of_range_seeds_are_usage_errors(command, seed, capsys):
    from dao.cli import main

    with pytest.raises(SystemExit) as info:
        main([*command, "--seed", seed])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Invalid value for '--seed'" in err, err
