"""Phase 2: fusion search and hyper-parameter search."""
