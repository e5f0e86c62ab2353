"""Toy distributions whose ideal denoiser, velocity and consistency map are known exactly."""

from gcflow.toy.mixture import TOY_PRESETS, GaussianMixture, make_toy

__all__ = ["GaussianMixture", "TOY_PRESETS", "make_toy"]
