"""Phase 3: class imbalance (losses and samplers)."""
