"""Predictive coding: inference on the layers' prediction errors, then local Hebbian updates."""
