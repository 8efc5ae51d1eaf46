"""``dao data download``: the official CSP benchmark CSVs from the DiffCSP repository, verified by sha256.

Only files whose size and sha256 are published in the shared data README are offered (the full official
train splits, which are not in the shared data); a download that does not match is deleted, never kept.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from dao.errors import DAOError

BASE_URL = "https://raw.githubusercontent.com/jiaor17/DiffCSP/main/data"
#: dataset -> file -> (size in bytes, sha256), from ../shared/data/README.md
KNOWN = {
    "mp_20": {"train.csv": (80_920_549, "9c5a34b3684ff4b86d87a86c1c42298d1d28322ea0f03059d9e80ab6a2b729a7")},
    "mpts_52": {"train.csv": (45_705_353, "db33cfc86530bbd4b020405989c5cd12130f447ad7b9258d29b3ff9c8a26d764")},
    "perov_5": {"train.csv": (21_695_296, "6144a97ead4828a781a1c269c56fedc34b65945977c6433a055a720c47bf77f6")},
    "carbon_24": {"train.csv": (15_214_751, "79b4465695d82b23abb56e9b855ac4841eb991ff3e0952a44b0ca3857e1a304a")},
}


def download(dataset: str, out: str | Path, base_url: str | None = None, timeout: float = 30.0,
             known: dict | None = None, progress: bool = False) -> list[Path]:
    """Download every verified file of ``dataset`` into ``out/<dataset>/``; returns the paths written.
    Files already present with the right sha256 are kept without downloading."""
    from tqdm.auto import tqdm

    table = KNOWN if known is None else known
    base_url = BASE_URL if base_url is None else base_url
    if dataset not in table:
        raise DAOError(f"unknown dataset {dataset!r}: choose from {', '.join(sorted(table))}")
    folder = Path(out) / dataset
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (size, sha) in table[dataset].items():
        target = folder / name
        if target.is_file() and _sha256(target) == sha:
            written.append(target)
            continue
        url = f"{base_url.rstrip('/')}/{dataset}/{name}"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as fh, urllib.request.urlopen(url, timeout=timeout) as resp:
                bar = tqdm(total=size, unit="B", unit_scale=True, desc=f"{dataset}/{name}", disable=not progress)
                while chunk := resp.read(1 << 20):
                    fh.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
                bar.close()
            if digest.hexdigest() != sha:
                raise DAOError(f"{url}: sha256 {digest.hexdigest()[:16]}… does not match the published "
                               f"{sha[:16]}… (file discarded)")
            os.replace(tmp, target)
            written.append(target)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DAOError(f"cannot download {url} ({reason}); no network? the shared data README lists "
                           "what is available offline") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return written


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
