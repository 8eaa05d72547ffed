"""Experiment drivers: release, reports and figures behind the README's tables."""
