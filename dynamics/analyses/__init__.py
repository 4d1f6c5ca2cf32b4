"""Analyses of the embedded world's controlled structure: duplication (dose-response), canaries
(verbatim score and exposure), and the recitation / reconstruction / recollection taxonomy.

  world.py        readers of the world's manifests (documents, samples, canaries), with one-line
                  errors for a family directory of the old layout
  stats.py        seeded bootstrap intervals, log-spaced bins, the one-feature logistic fit
  duplication.py  per-sample occurrence counts beside the scores (`_duplication.parquet`), dose-response
  taxonomy.py     recitation / reconstruction / recollection per sample, shares and transitions
  canaries.py     `memdyn canaries`: per canary, size and checkpoint, greedy score and exposure
  exposure.py     the exposure estimator of Carlini et al. (2019)
"""
