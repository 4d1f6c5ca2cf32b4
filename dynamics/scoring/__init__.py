"""Memorization scores: the grid scorer kernel, the chunked resumable score table, transitions and summaries."""

# samples per scoring batch: decoding steps are bound by their fixed cost at these sizes, which 64
# samples share better than 32, with the same generations, losses and scores (the tiny family's
# scores stage, 2000 samples, two workers, 90-96 G MAC/s: 135-141 s against 144-145 s)
BATCH_SIZE = 64
