"""Decoding dynamics: entropy, n-gram counts per position, hidden states, boundary statistics, embedding trajectories, word n-grams."""
