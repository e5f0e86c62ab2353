"""The bundled trainer: configuration, presets, run folders, checkpoints and the training loop."""
