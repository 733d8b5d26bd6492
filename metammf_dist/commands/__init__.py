"""One module per ``metammf-dist`` command: ``add_arguments(parser)`` and ``run(args) -> int``.

Each parses its arguments and calls into the layers below (data, train, planner, scaling, bench); the
wiring to argparse is ``metammf_dist/cli.py``.
"""
