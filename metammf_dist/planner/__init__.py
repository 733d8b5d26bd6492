"""Memory planner: per-rank memory of a training run predicted from its config and catalog size.

``memory.py`` holds the model (``plan_memory``, ``largest_catalog``, ``Workload``); ``commands/plan.py`` is the
``metammf-dist plan`` command (table, largest catalog that fits, optional check against a real run).
"""
