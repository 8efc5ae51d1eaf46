"""Template candidates: known structures of the same prototype with substituted species (docs/templates.md).

:class:`TemplateIndex` builds, saves, loads and filters the index and proposes
:class:`dao.candidates.Candidate` objects (``source="template"``) for a cell composition.
"""
from __future__ import annotations

from dao.templates.index import DEFAULT_SIMILARITY, TemplateIndex
from dao.templates.store import FORMAT_VERSION, TemplateIndexError

__all__ = ["DEFAULT_SIMILARITY", "FORMAT_VERSION", "TemplateIndex", "TemplateIndexError"]
