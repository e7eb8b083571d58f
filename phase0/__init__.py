"""Phase 0: data cleaning, audit, persisted split and dataset analysis."""
