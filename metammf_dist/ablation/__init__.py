"""Evidence for (or against) the meta-learner: seeded fusion ablations and what the meta vectors encode.

* ``runner`` -- ``metammf-dist ablate``: the variants (meta, CP, static fusion, ID-only) trained on the same
  seeds, one run folder each, resumable; ``results.csv`` + ``results.md``;
* ``report`` -- the markdown tables from ``results.csv`` alone (means, paired differences, per-seed values);
* ``stats``  -- paired differences with Student-t intervals (no scipy);
* ``probe``  -- ``metammf-dist probe``: linear probes of a run's meta vectors ``s_i`` (the planted gate of a
  ``synth --planted-fusion`` catalog, modality dominance, popularity).

A tools folder like ``scaling/``: it drives ``train`` as a child process and reads run folders; nothing below
imports it.
"""
