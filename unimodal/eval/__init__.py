"""Evaluation: judges that read generated images back, and metrics."""
