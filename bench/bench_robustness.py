"""Hostile-input robustness: formulas through parse_formula + cells_to_generate, and a subset end to end
through ``dao.cli.main(["predict", ...])`` with a tiny untrained generator (``--steps 2``, in-process).

Per family it counts tried / ok / clean error (a DAOError) / traceback (any other exception) / hang (over
the per-call limit) / silently wrong (a parse whose composition differs from the one the generator meant,
or a parse of text that means no valid formula) / partial output (the --out folder exists after a failed
run). Prints one JSON object.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_robustness.py [--formulas 10000] [--e2e 200] [--seed 0]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--formulas", type=int, default=10_000)
    ap.add_argument("--e2e", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    all_cases = cases(args.formulas, rng)
    report: dict[str, Counter] = {}
    t0 = time.time()
    for family, text, intended in all_cases:
        outcome = parse_outcome(text, intended)
        if family.startswith("hostile") and outcome == "ok":
            outcome = "silently_wrong"
        report.setdefault(f"parse/{family.split(':')[0]}", Counter())[outcome] += 1
        if ":" in family:
            report.setdefault(f"parse/{family}", Counter())[outcome] += 1
    t_parse = time.time() - t0
    with tempfile.TemporaryDirectory() as d:
        ckpt = tiny_checkpoint(Path(d))
        picks = rng.sample(all_cases, min(args.e2e, len(all_cases)))
        for i, (family, text, _) in enumerate(picks):
            outcome = e2e_outcome(text, ckpt, Path(d) / f"out{i}")
            report.setdefault(f"predict/{family.split(':')[0]}", Counter())[outcome] += 1
    keys = ["ok", "clean_error", "traceback", "hang", "silently_wrong", "partial_output"]
    print(json.dumps({"formulas": args.formulas, "e2e": args.e2e, "seed": args.seed, "limit_s": LIMIT_S,
                      "parse_seconds": round(t_parse, 2), "seconds": round(time.time() - t0, 2),
                      "families": {fam: {"tried": sum(c.values()), **{k: c.get(k, 0) for k in keys}}
                                   for fam, c in sorted(report.items())}},
                     indent=2))


if __name__ == "__main__":
    main()
