"""The training loop and what it needs: objective, schedule, checkpoints, run folder, restore, inference.

    loop.py         ``Trainer``: dataset -> sampler -> model -> DeepSpeed engine -> evaluation -> checkpoints
    objective.py    BPR loss as one module (what the engine wraps)
    lr_schedule.py  ``train.lr_schedule`` as a function of the global step
    checkpoint.py   atomic checkpoints (``COMPLETE.json`` marker, ``latest.json`` / ``best.json`` pointers)
    run_dir.py      the run folder: config, DeepSpeed JSON, git state, metrics, final metrics, usage
    restore.py      a trained model rebuilt from a run folder in one process (``evaluate``, ``export``)
    inference.py    every user and item vector for full ranking
"""
