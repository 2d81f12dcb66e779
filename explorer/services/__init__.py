"""Services: run folders, training jobs, computations for the views, uploads (no widgets)."""
