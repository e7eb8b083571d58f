"""Phase 1: the baseline."""
