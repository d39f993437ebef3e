"""The image model: ImageFlow (dequantization, preprocessing, body, priors) and its dequantizers."""
