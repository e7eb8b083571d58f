"""Phase 5: modality ablation (masking and retrained unimodal models)."""
