"""Hostile-input robustness campaign. Families:

- formulas through parse_formula + cells_to_generate, and a subset end to end through
  ``dao.cli.main(["predict", ...])`` with a tiny untrained generator (``--steps 2``, in-process);
- malformed structure files (robustness_cases.STRUCTURE_KINDS), each between two good CIFs, through
  ``dao energy`` and ``dao relax``: the bad file must be one error line naming it, both good ones processed,
  exit code 1, and the relax folder must hold only the good ones;
- broken checkpoints (fields missing or of the wrong type, bad weights, truncated/garbage files, wrong kind)
  through ``dao predict``/``dao info`` (generators) and ``dao energy``/``dao info`` (DAO-P);
- broken training configs through ``dao train generator``: refused before a run folder exists.

Per family it counts tried / ok / clean error (refused with a one-line error, or a DAOError) / traceback
(any other exception) / hang (over the per-call limit) / silently wrong (a bad input accepted, a good one
lost, a parse whose composition differs from the one meant, an error not naming the bad input) / partial
output (an output folder left by a failed run, or holding a bad input's output). Prints one JSON object.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_robustness.py [--formulas 10000] [--e2e 200]
        [--structures 208] [--seed 0]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import signal
import tempfile
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from robustness_cases import GOOD_CELLS, checkpoint_cases, config_cases, structure_cases  # noqa: E402

SYMBOLS = ["H", "Li", "B", "C", "N", "O", "F", "Na", "Mg", "Al", "Si", "S", "Cl", "K", "Ca", "Ti", "Fe", "Cu",
           "Sr", "Ba", "La", "U", "Cs", "V", "Sb", "Es", "Er", "Og"]
CORRUPTIONS = ["zero", "exponent", "junk", "isotope", "unicode_digit", "huge", "unbalanced", "space_count"]
LIMIT_S = 10


def built(rng: random.Random) -> tuple[str, dict[str, int]]:
    """A valid formula (groups, brackets, multipliers, spaces between tokens) and its element counts."""
    counts: dict[str, int] = {}
    parts = []
    for _ in range(rng.randint(1, 3)):
        group = [(rng.choice(SYMBOLS), rng.randint(1, 6)) for _ in range(rng.randint(1, 3))]
        mult = rng.choice([1, 1, 2, 3])
        text = "".join(el + (str(n) if n > 1 else "") for el, n in group)
        if mult > 1:
            o, c = rng.choice(["()", "[]"])
            text = f"{o}{text}{c}{mult}"
        for el, n in group:
            counts[el] = counts.get(el, 0) + n * mult
        parts.append(text)
    return rng.choice(["", " "]).join(parts), counts


def corrupt(text: str, kind: str, rng: random.Random) -> str:
    """``text`` made invalid in one way (each of these was once accepted or a traceback)."""
    pos = rng.randint(1, len(text))
    insert = {"zero": rng.choice(SYMBOLS[:-1]) + "0", "exponent": rng.choice(SYMBOLS[:-1]) + rng.choice(["1e-400", "1e400", "2E3"]),
              "junk": rng.choice("@#$%&*!?;:/\\|~^=<>,'\"`"), "isotope": rng.choice(["D2", "T", "D"]),
              "unicode_digit": "Na" + rng.choice("²³¹２٣߃"), "huge": "Fe" + "9" * rng.randint(5, 5000),
              "unbalanced": rng.choice("()[]"), "space_count": "Fe 2"}[kind]
    return text[:pos] + insert + text[pos:] if kind != "isotope" else insert + text


def cases(n: int, rng: random.Random) -> list[tuple[str, str, dict[str, int] | None]]:
    """(family, text, intended counts or None when no valid formula is meant)."""
    out = []
    for i in range(n):
        family = ["built", "hostile", "random"][i % 3]
        text, counts = built(rng)
        if family == "hostile":
            kind = CORRUPTIONS[(i // 3) % len(CORRUPTIONS)]
            out.append((f"hostile:{kind}", corrupt(text, kind, rng), None))
        elif family == "random":
            alphabet = "NaClFeOUD()[]0123456789.e-+ @²２" + "".join(chr(rng.randint(0x20, 0x3000)) for _ in range(4))
            out.append(("random", "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14))), None))
        else:
            out.append(("built", text, counts))
    return out


TRACEBACKS: list[str] = []  # the exceptions that escaped a command (first ones go into the report)


class Hang(Exception):
    pass


def timed(fn, *args):
    def alarm(*_):
        raise Hang()
    signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, LIMIT_S)
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def parse_outcome(text: str, intended: dict[str, int] | None) -> str:
    from dao.errors import DAOError
    from dao.formula import cells_to_generate

    try:
        cells = timed(cells_to_generate, text, 10_000)
    except Hang:
        return "hang"
    except DAOError:
        return "clean_error"
    except Exception:  # noqa: BLE001 - counting what escapes is the point
        return "traceback"
    if intended is None:
        # random text may be a valid formula (hostile text never is: see main); non-ASCII must never parse
        return "ok" if text.isascii() else "silently_wrong"
    return "ok" if dict(cells[0].counts) == intended else "silently_wrong"


def e2e_outcome(text: str, checkpoint: Path, out: Path) -> str:
    from dao.cli import main

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            timed(main, ["predict", text, "--model", str(checkpoint), "--no-rank", "-n", "1", "--steps", "2",
                         "--out", str(out), "--device", "cpu", "--no-progress"])
        return "ok"
    except Hang:
        return "hang"
    except SystemExit as exc:
        if exc.code in (0, None):
            return "ok"
        return "partial_output" if out.exists() else "clean_error"
    except Exception:  # noqa: BLE001
        return "traceback"


def run_cli(args: list[str]) -> tuple[str | None, int, str, str]:
    """Run ``dao ARGS`` in-process: (``traceback``/``hang`` or None, exit code, stdout, stderr)."""
    from dao.cli import main

    out, err = io.StringIO(), io.StringIO()
    code, escaped = 0, None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            timed(main, args)
    except Hang:
        escaped = "hang"
    except SystemExit as exc:
        code = 0 if exc.code is None else int(exc.code)
    except Exception as exc:  # noqa: BLE001 - counting what escapes is the point
        escaped = "traceback"
        TRACEBACKS.append(f"dao {' '.join(args[:2])}: {type(exc).__name__}: {str(exc)[:200]}")
    return escaped, code, out.getvalue(), err.getvalue()


def tiny_checkpoint(folder: Path) -> Path:
    import torch

    from dao.models.checkpoint import save_model
    from dao.models.generator import DAOGenerator, GeneratorConfig
    from dao.nn.crysformer import CrysformerConfig

    torch.manual_seed(0)
    model = DAOGenerator(GeneratorConfig(model=CrysformerConfig(hidden=16, layers=1, heads=2, num_freqs=4, time_dim=8),
                                         max_atoms=40)).eval()
    save_model(folder / "tiny.pt", model, {"note": "untrained, bench_robustness"})
    return folder / "tiny.pt"


def tiny_energy_checkpoint(folder: Path) -> Path:
    import torch

    from dao.models.checkpoint import save_model
    from dao.models.energy import DAOEnergyModel, EnergyConfig
    from dao.nn.crysformer import CrysformerConfig

    torch.manual_seed(0)
    model = DAOEnergyModel(EnergyConfig(model=CrysformerConfig(hidden=16, layers=1, heads=2, num_freqs=4, time_dim=8),
                                        max_atoms=40))
    save_model(folder / "tiny_energy.pt", model.eval(), {"note": "untrained, bench_robustness"})
    return folder / "tiny_energy.pt"


def good_files(folder: Path) -> list[Path]:
    """Two good CIFs (NaCl, SrTiO3) that every structure case is put between."""
    from pymatgen.core import Lattice, Structure

    paths = []
    for name, (species, frac, a) in (("good_a", GOOD_CELLS[0]), ("good_b", GOOD_CELLS[2])):
        Structure(Lattice.cubic(a), species, frac).to(filename=str(folder / f"{name}.cif"))
        paths.append(folder / f"{name}.cif")
    return paths


def structure_outcomes(bad: Path, good: list[Path], energy_ckpt: Path, out: Path) -> dict[str, str]:
    """The outcome of ``dao energy`` and ``dao relax`` on good[0], bad, good[1]."""
    files = [str(good[0]), str(bad), str(good[1])]
    escaped, code, stdout, stderr = run_cli(["energy", *files, "--model", str(energy_ckpt), "--device", "cpu"])
    names = [json.loads(line)["name"] for line in stdout.splitlines() if line.strip()] if not escaped else []
    energy = escaped or ("silently_wrong" if code != 1 or names != ["good_a", "good_b"] or bad.name not in stderr
                         else "clean_error")
    escaped, code, _, stderr = run_cli(["relax", *files, "--model", str(energy_ckpt), "--out", str(out),
                                        "--steps", "2", "--trajectory-every", "0", "--device", "cpu"])
    written = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    relax = escaped or ("partial_output" if written != ["good_a.cif", "good_b.cif", "summary.json"]
                        else "silently_wrong" if code != 1 or bad.name not in stderr else "clean_error")
    return {"energy": energy, "relax": relax}


def refused_outcome(args: list[str], out: Path | None = None, name: str | None = None) -> str:
    """A command given one broken input: it must exit 2 with a ``dao: error:`` line (naming ``name``) and leave
    no ``out``."""
    escaped, code, stdout, stderr = run_cli(args)
    if escaped:
        return escaped
    if out is not None and out.exists():
        return "partial_output"
    if code == 2 and "dao: error:" in stderr and (name is None or name in stderr):
        return "clean_error"
    return "silently_wrong"


def formula_families(args: argparse.Namespace, rng: random.Random, tmp: Path, report: dict[str, Counter]) -> None:
    all_cases = cases(args.formulas, rng)
    for family, text, intended in all_cases:
        outcome = parse_outcome(text, intended)
        if family.startswith("hostile") and outcome == "ok":
            outcome = "silently_wrong"
        report.setdefault(f"parse/{family.split(':')[0]}", Counter())[outcome] += 1
        if ":" in family:
            report.setdefault(f"parse/{family}", Counter())[outcome] += 1
    ckpt = tiny_checkpoint(tmp)
    picks = rng.sample(all_cases, min(args.e2e, len(all_cases)))
    for i, (family, text, _) in enumerate(picks):
        outcome = e2e_outcome(text, ckpt, tmp / f"out{i}")
        report.setdefault(f"predict/{family.split(':')[0]}", Counter())[outcome] += 1


def file_families(args: argparse.Namespace, rng: random.Random, tmp: Path, report: dict[str, Counter]) -> None:
    gen, energy = tiny_checkpoint(tmp), tiny_energy_checkpoint(tmp)
    good = good_files(tmp)
    for i, (kind, bad) in enumerate(structure_cases(tmp / "structures", args.structures, rng)):
        for command, outcome in structure_outcomes(bad, good, energy, tmp / f"relaxed{i}").items():
            report.setdefault(f"structures/{command}", Counter())[outcome] += 1
            report.setdefault(f"structures/{command}:{kind}", Counter())[outcome] += 1
    ckpts = [("generator", *c) for c in checkpoint_cases(tmp / "ckpt_g", gen, rng, "gen")]
    ckpts += [("energy", *c) for c in checkpoint_cases(tmp / "ckpt_e", energy, rng, "energy")]
    ckpts += [("generator", "wrong_kind", energy), ("energy", "wrong_kind", gen)]
    for i, (model_kind, kind, path) in enumerate(ckpts):
        out = tmp / f"ckpt_out{i}"
        use = (["predict", "NaCl", "--model", str(path), "--no-rank", "-n", "1", "--steps", "2", "--out", str(out),
                "--device", "cpu", "--no-progress"] if model_kind == "generator"
               else ["energy", str(good[0]), "--model", str(path), "--device", "cpu"])
        checks = [("use", use)] + ([("info", ["info", "--model", str(path)])] if kind != "wrong_kind" else [])
        for command, argv in checks:
            outcome = refused_outcome(argv, out if command == "use" else None, path.name)
            report.setdefault(f"checkpoints/{model_kind}/{command}", Counter())[outcome] += 1
            report.setdefault(f"checkpoints/{kind}", Counter())[outcome] += 1
    data = tmp / "train.csv"
    data.write_text("material_id,cif\n" + "".join(f"t{i},\"{p.read_text()}\"\n" for i, p in enumerate(good)))
    for i, (kind, cfg) in enumerate(config_cases(tmp / "configs")):
        out = tmp / f"run{i}"
        outcome = refused_outcome(["train", "generator", "--data", str(data), "--config", str(cfg), "--out", str(out),
                                   "--device", "cpu"], out)
        report.setdefault("configs/train", Counter())[outcome] += 1
        report.setdefault(f"configs/{kind}", Counter())[outcome] += 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--formulas", type=int, default=10_000)
    ap.add_argument("--e2e", type=int, default=200)
    ap.add_argument("--structures", type=int, default=208, help="malformed structure files (each with two good)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    import dao.cli  # noqa: F401 - imports (lightning, pymatgen, ase) are not counted against a call's time limit
    import dao.relax  # noqa: F401
    import dao.train  # noqa: F401

    rng = random.Random(args.seed)
    report: dict[str, Counter] = {}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        formula_families(args, rng, Path(d), report)
        t_formulas = time.time() - t0
        file_families(args, rng, Path(d), report)
    keys = ["ok", "clean_error", "traceback", "hang", "silently_wrong", "partial_output"]
    print(json.dumps({"formulas": args.formulas, "e2e": args.e2e, "structures": args.structures, "seed": args.seed,
                      "limit_s": LIMIT_S, "formula_seconds": round(t_formulas, 2), "seconds": round(time.time() - t0, 2),
                      "families": {fam: {"tried": sum(c.values()), **{k: c.get(k, 0) for k in keys}}
                                   for fam, c in sorted(report.items())},
                      "traceback_examples": TRACEBACKS[:10]},
                     indent=2))


if __name__ == "__main__":
    main()
