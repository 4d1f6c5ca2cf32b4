"""Memorization scores: the grid scorer kernel, the chunked resumable score table, transitions and summaries."""

# samples per scoring batch: decoding steps are bound by their fixed cost at these sizes, which 64
# samples share better than 32 (the tiny family's grid, 4 x 4 cells with p_z, one thread: 4.2m 5-15%
# and 617k 10% faster, the checkpoint-wise cell 15-30%), with the same generations and losses
BATCH_SIZE = 64
