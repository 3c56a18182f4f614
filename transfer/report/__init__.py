"""Presentation: figures and tables drawn from the analysis. No torch."""
