"""CSP evaluation: the field's protocol (DiffCSP ``scripts/compute_metrics.py``), exact and parallel.

Protocol
--------
* Match: ``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3).get_rms_dist(pred, ref)`` is not ``None``;
  the pair's RMS is its first element. Both structures are rebuilt as DiffCSP's ``Crystal`` does
  (``Lattice.from_parameters`` of the cell lengths/angles, species by atomic number, fractional
  coordinates as given), so oxidation states and site properties play no part.
* Validity (DiffCSP ``smact_validity`` + ``structure_validity``, see :mod:`dao.evaluate.validity`):
  SMACT charge neutrality with the Pauling test and the SMACT-2014 oxidation states (single-element and
  all-metal compositions pass), all interatomic distances ≥ 0.5 Å, volume ≥ 0.1 Å³, finite lattice.
* Match rate = matched reference rows / number of reference rows. With k samples a row is matched if any
  of its first k samples matches, and its RMS is the minimum over matching samples; RMSE = mean RMS over
  matched rows. Reported side by side:
  ``match_rate``/``rmse`` (only valid predictions count: DiffCSP multi-sample ``RecEvalBatch``),
  ``match_rate_unfiltered``/``rmse_unfiltered`` (validity ignored), and ``match_rate_diffcsp_k1``
  (sample 0 only, prediction *and* reference must be valid: DiffCSP single-sample ``RecEval``).
* Polymorph recovery: among reduced compositions with 2–4 distinct reference structures (greedy
  StructureMatcher grouping of the reference rows), the share whose every structure is matched by at least
  one sample of any reference row with that composition (samples pooled).
* Stability rate (when an :class:`EnergyScorer` is given): share of generated structures with
  E_hull ≤ 0.08 eV/atom (denominator: every present sample slot, unreadable ones included).
* Exact pre-filter: a prediction whose reduced composition differs from the reference's is not sent to
  the matcher (``get_rms_dist`` returns ``None`` for it in every case: after primitive reduction it needs
  equal site counts and a zero-cost species assignment).

Miss reasons (``per_structure.csv``, column ``reason``; the row reports its most advanced sample):
``missing`` (no prediction), ``unreadable`` (unparseable, disordered, no sites), ``invalid`` (fails the
validity gate), ``wrong_composition``, ``no_match``. ``reason_unfiltered`` is the same without ``invalid``.

Inputs
------
Reference CSV (DiffCSP/CDVAE format, ``.csv`` or ``.csv.gz``): one crystal per row, ``cif`` column
(pymatgen CIF), usually ``material_id``. Row index i (0-based) identifies reference i.

Predictions, any of:

(a) a directory of CIF files ``<idx>_<sample>.cif`` (the convention DAO's generator writes), or
    ``<material_id>_<sample>.cif``, or ``<idx>.cif`` / ``<material_id>.cif`` (sample 0). A name made only
    of digits is a 0-based row index whenever that row exists, so name files by index for datasets with
    numeric material_ids (perov-5); anything else is looked up as a material_id;
(b) one extxyz file whose frames carry info keys ``ref_index`` (or ``material_id``) and ``sample`` (the
    convention DAO's generator writes); frames without ``sample`` take the next free sample number of
    their row; if no frame has ``ref_index``/``material_id``, frames are taken in order, k per reference;
(c) a CSV with columns ``ref_index`` or ``material_id``, optional ``sample``, and ``cif``.

Unparseable entries become ``None`` (reason ``unreadable``); gaps in a row's sample numbering are
``MISSING``; entries naming no reference row are ignored and counted (``input.n_unassigned``).

Speed and resumption
--------------------
``workers`` > 1 uses a spawn process pool with one BLAS thread per worker. Every finished task is appended
to ``cache_path`` (JSON lines, one ``os.write`` per line, keyed by a hash of the structures and protocol),
so an interrupted run continues where it stopped. ``dao evaluate`` keeps it as ``<out>/cache.jsonl``.

Modules
-------
:mod:`.canon` canonical structures, matcher, validity of one structure; :mod:`.runner` tasks, cache and
process pool; :mod:`.table` per-sample and per-row records; :mod:`.metrics` one function per summary metric
and the ``@metric`` registry (a new metric is one decorated function there); :mod:`.core` ``evaluate()``;
:mod:`.io` inputs; :mod:`.report` outputs; :mod:`.pipeline` files in, report out (``dao evaluate``).
See docs/design.md, 'Evaluation'.
"""

from __future__ import annotations

from dao.constants import STABILITY_THRESHOLD
from dao.evaluate.canon import MATCHER_KWARGS, MISSING, is_valid
from dao.evaluate.core import EnergyScorer, EvaluationResult, evaluate
from dao.evaluate.io import load_predictions, load_references
from dao.evaluate.metrics import METRICS, metric
from dao.evaluate.pipeline import evaluate_files
from dao.evaluate.report import write_report
from dao.evaluate.table import SampleTable

__all__ = [
    "MATCHER_KWARGS",
    "METRICS",
    "MISSING",
    "STABILITY_THRESHOLD",
    "EnergyScorer",
    "EvaluationResult",
    "SampleTable",
    "evaluate",
    "evaluate_files",
    "is_valid",
    "load_predictions",
    "load_references",
    "metric",
    "write_report",
]
