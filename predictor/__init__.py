"""Memorization predictor: predicts from a context whether a model will reproduce its continuation."""
