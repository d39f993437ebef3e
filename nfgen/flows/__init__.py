"""Bijections: each maps data to latent in ``forward`` and returns ``(z, logdet)``."""
