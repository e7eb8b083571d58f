"""Phase 6: CLIP linear probes (and zero-shot prompts) against the phase-4 model."""
