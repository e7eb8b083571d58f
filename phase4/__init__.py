"""Phase 4: hard samples, captions, fine-tuning and prediction."""
