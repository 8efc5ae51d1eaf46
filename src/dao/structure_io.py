"""Writing predictions: CIF (P1 and symmetrized), extxyz and a JSON summary, all-or-nothing."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator


#: output folders this process holds (resolved path → lock file handle), so that nested claims are re-entrant
_CLAIMS: dict[Path, Any] = {}


@contextmanager
def claim_output_dir(out: str | Path, overwrite: bool = False, resume: bool = False) -> Iterator[Path]:
    """Hold the exclusive lock of output folder ``out`` for the block (``<parent>/.<name>.lock``, an
    ``fcntl.flock`` released on exit, also when the process dies; the file is removed on a clean exit): a second run into the same folder fails at
    once with a DAOError instead of both succeeding and one's output silently replacing the other's.

    Unless ``overwrite`` (replace it) or ``resume`` (commands with a resumable cache: evaluate, benchmark),
    a non-empty ``out`` is refused before any work is done. Re-entrant within a process.
    """
    import fcntl

    from dao.errors import DAOError

    out = Path(out)
    key = out.resolve()
    if key in _CLAIMS:
        yield out
        return
    if out.exists() and not out.is_dir():
        raise DAOError(f"output folder {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (overwrite or resume):
        raise DAOError(f"output folder {out} is not empty; use --overwrite to replace it (or choose another --out)")
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.parent / f".{out.name}.lock"
    while True:
        handle = open(lock, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise DAOError(f"output folder {out} is in use by another dao run (lock {lock})") from None
        try:
            if os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino:
                break  # the lock file we hold is still the one at the path
        except FileNotFoundError:
            pass
        handle.close()  # its holder removed it between our open and our lock: take the new one
    _CLAIMS[key] = handle
    try:
        yield out
    finally:
        del _CLAIMS[key]
        lock.unlink(missing_ok=True)  # removed while still held, then released: no leftovers, no race
        handle.close()


@contextmanager
def staged_output_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it *replaces* ``out`` as a whole (renamed into
    place; an existing ``out`` is first renamed aside, then deleted), on error it is deleted: a run never
    leaves half-written files, and never a mix of its files and an earlier run's.

    Holds ``out``'s lock (:func:`claim_output_dir`, re-entrant: a command that claimed ``out`` with
    ``--overwrite`` has already decided); unclaimed, a non-empty ``out`` is refused unless ``overwrite``.
    """
    out = Path(out)
    with claim_output_dir(out, overwrite=overwrite):
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # a folder as mkdir makes it (mkdtemp's is private)
        try:
            yield tmp
            if out.is_dir():
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
                os.replace(out, old / out.name)
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` all-or-nothing: ``write(fh)`` fills a temporary binary file in the same folder, which is
    then renamed into place (readable by all, as a shared file should be); on any error nothing is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file (UTF-8) all-or-nothing."""
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def symmetry_info(structure: Any, symprec: float = 0.1) -> dict:
    """Space group found by spglib (via pymatgen) at ``symprec`` Å; P1 when none."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sga = SpacegroupAnalyzer(structure, symprec=symprec)
            return {"number": int(sga.get_space_group_number()), "symbol": sga.get_space_group_symbol(), "symprec": symprec}
    except Exception:
        return {"number": 1, "symbol": "P1", "symprec": symprec}


def write_cif(structure: Any, path: Path, symprec: float | None = None) -> None:
    from pymatgen.io.cif import CifWriter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        CifWriter(structure, symprec=symprec).write_file(str(path))


def write_extxyz(structures: Iterable[Any], infos: list[dict], path: Path, append: bool = False) -> None:
    """Structures as extxyz frames with their scalar ``infos``; ``append`` adds them to an existing file."""
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    frames = []
    for s, info in zip(structures, infos):
        atoms = AseAtomsAdaptor.get_atoms(s)
        atoms.info.update({k: v for k, v in info.items() if isinstance(v, (int, float, str, bool))})
        frames.append(atoms)
    write(str(path), frames, format="extxyz", append=append)


def write_json(obj: Any, path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False, default=str) + "\n")
