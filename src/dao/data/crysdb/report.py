"""The outputs of a CrysDB build besides the shards: ``report.json`` (per-source stage counts, stability,
element coverage), ``skipped.csv`` and the ``elements.png`` coverage plot."""
from __future__ import annotations

import csv
import io
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dao.constants import STABILITY_THRESHOLD
from dao.data.crysdb.store import write_shard
from dao.structure_io import staged_output_dir, write_json

STAGES = ("read", "parse_failed", "filtered_atoms", "filtered_e_hull", "excluded_id", "matches_excluded",
          "duplicate", "kept")


@dataclass
class BuildReport:
    """``report.json`` of a CrysDB: the build config, stage counts per source and in total, stability
    (stable: E_hull ≤ :data:`~dao.constants.STABILITY_THRESHOLD`), entries per element, shard files."""

    config: dict
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    excluded_sources: dict[str, dict[str, int]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    stability: dict[str, int] = field(default_factory=dict)
    elements: dict[str, int] = field(default_factory=dict)
    shards: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _stability(e: float | None) -> str:
    if e is None or math.isnan(e):
        return "unlabelled"
    return "stable" if e <= STABILITY_THRESHOLD else "unstable"


def _count_sources(report: BuildReport, jobs: Sequence[tuple[Path, str, bool]], counts: dict[str, Counter]) -> None:
    for path, name, is_exclude in jobs:
        target = report.excluded_sources if is_exclude else report.sources
        target[name] = {s: int(counts[name].get(s, 0)) for s in STAGES
                        if not is_exclude or s in ("read", "parse_failed")}
        target[name]["path"] = str(path)
    report.totals = {s: int(sum(report.sources[n][s] for n in report.sources)) for s in STAGES}


def write_outputs(report: BuildReport, out: str | Path, shard_rows: list[list[dict[str, Any]]],
                  jobs: Sequence[tuple[Path, str, bool]], counts: dict[str, Counter],
                  skipped: list[tuple[str, int, str, str]], t0: float) -> BuildReport:
    """Write the shards, ``report.json``, ``skipped.csv`` and ``elements.png`` into ``out`` at once."""
    from pymatgen.core import Element

    elements: Counter = Counter()
    stability: Counter = Counter()
    with staged_output_dir(out, overwrite=True) as tmp:  # a build replaces its folder as a whole
        (tmp / "shards").mkdir()
        for j, rows in enumerate(r for r in shard_rows if r):
            rows.sort(key=lambda r: r["key"])
            write_shard(rows, tmp / "shards" / f"part-{j:05d}.parquet")
            report.shards.append(f"shards/part-{j:05d}.parquet")
            for r in rows:
                for z in set(r["atomic_numbers"]):
                    elements[Element.from_Z(int(z)).symbol] += 1
                stability[_stability(r["e_above_hull"])] += 1
        _count_sources(report, jobs, counts)
        report.stability = dict(stability)
        report.elements = dict(sorted(elements.items(), key=lambda kv: -kv[1]))
        report.seconds = round(time.time() - t0, 2)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["source", "row", "stage", "reason"])
        w.writerows(skipped)
        (tmp / "skipped.csv").write_text(buf.getvalue())
        write_json(asdict(report), tmp / "report.json")
        plot_elements(report.elements, tmp / "elements.png")
    return report


def plot_elements(elements: dict[str, int], path: Path) -> None:
    """Bar chart (log scale) of the number of entries containing each element, in order of Z."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pymatgen.core import Element

    items = sorted(elements.items(), key=lambda kv: Element(kv[0]).Z)
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(items)), 3.2))
    ax.bar(range(len(items)), [v for _, v in items], color="#4477aa")
    ax.set_xticks(range(len(items)), [k for k, _ in items], rotation=90, fontsize=6)
    ax.set_yscale("log")
    ax.set_ylabel("entries containing the element")
    ax.set_title(f"CrysDB element coverage ({len(items)} elements)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
