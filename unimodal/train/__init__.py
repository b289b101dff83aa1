"""Training: recipes, the DeepSpeed trainer, checkpoints and exact resume."""
