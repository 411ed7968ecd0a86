"""The method: models, masks, fine-tuning, sampling, and the geometry-only stitch."""
