"""Scaling experiments on synthetic catalogs (``metammf-dist scale SWEEP.yaml``).

``sweep`` (the YAML: catalog sizes x series) -> ``point`` (one real training run per point, its figures and
the planner's prediction) -> ``report`` (CSV, markdown, PNG plots); ``commands/scale.py`` drives them.
"""
