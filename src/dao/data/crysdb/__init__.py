"""CrysDB (see docs/design.md, 'Data and CrysDB'): crystal sources merged into one deduplicated, sharded
Parquet store. ``store``: the folder format and reading it; ``build``: parsing, filtering and writing
(:func:`build_crysdb`); ``report``: ``report.json``, ``skipped.csv`` and the element plot; ``dedupe``: the
per-partition deduplication; ``relax``: dataset relaxation (:func:`relax_crysdb`)."""
from __future__ import annotations

from dao.data.crysdb.build import BuildConfig, build_crysdb, parse_entry, source_names
from dao.data.crysdb.dedupe import dedupe_partition
from dao.data.crysdb.relax import relax_crysdb
from dao.data.crysdb.report import STAGES, BuildReport, plot_elements
from dao.data.crysdb.store import crystal_from_record, is_crysdb, iter_crysdb, read_crysdb, schema
from dao.data.records import LABELS

__all__ = ["LABELS", "STAGES", "BuildConfig", "BuildReport", "build_crysdb", "crystal_from_record", "dedupe_partition",
           "is_crysdb", "iter_crysdb", "parse_entry", "plot_elements", "read_crysdb", "relax_crysdb", "schema",
           "source_names"]
