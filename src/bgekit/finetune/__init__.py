"""Fine-tuning: training data, losses, the trainer, hard-negative mining and teacher scores."""
