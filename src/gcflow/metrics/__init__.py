"""Sample-quality metrics: exact and sliced Wasserstein distances on toys; Fréchet distances on images."""
