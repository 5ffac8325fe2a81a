"""Posterior analysis: ArviZ conversion, plots, VI diagnostics, the consistency simulation, reports."""
