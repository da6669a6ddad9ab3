"""Searches over pipeline settings on a validation split (Prune2Drive view rates)."""
