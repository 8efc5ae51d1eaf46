"""Self-contained HTML reports (docs/xrd.md, 'Reports'): :mod:`dao.report.html` has the page pieces,
:mod:`dao.report.prediction` the ``report.html`` of a prediction folder, :mod:`dao.report.evaluation` that of
``dao evaluate`` / ``dao benchmark``."""
