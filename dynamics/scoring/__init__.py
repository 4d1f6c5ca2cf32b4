"""Memorization scores: the grid scorer kernel, the chunked resumable score table, transitions and summaries."""
