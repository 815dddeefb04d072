"""Equilibrium propagation: a free relaxation and nudged relaxations of an energy; updates from their difference."""
