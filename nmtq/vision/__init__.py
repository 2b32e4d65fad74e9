"""Image classification: models, data and the distillation trainer."""
