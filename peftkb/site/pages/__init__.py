"""One small renderer per page kind, each beside its template (site/templates/<kind>.md.j2).

Every module has `render(env, model, root) -> {docs-relative path: text}`; `ALL` is the order they run in.
"""
from __future__ import annotations

from peftkb.site.pages import api, assessment, category, comparison, home, method, methods, survey, taxonomy, timeline

ALL = (home, taxonomy, category, methods, method, comparison, timeline, survey, assessment, api)
