"""The final recipe: cross-validated training, seed/fold ensemble and decision rule (quality issue)."""
