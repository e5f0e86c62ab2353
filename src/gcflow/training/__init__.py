"""The bundled trainer: configuration, presets, run folders, checkpoints and the training loop.

Grouped by role (each module imports only those above it in this list, or gcflow's library):

* config.py (typed config, overrides, validate), presets.py (named presets);
* data_source.py (toy and image sources), evaluate.py (toy and image evaluators, sampling);
* builders.py (network, optimizer, device and precision from the config), lion.py;
* distributed.py (torchrun processes, batch split, weight fingerprint), faults.py (non-finite steps);
* checkpoint.py, run_dir.py (files), run_state.py (checkpoint contents, resume, `load_run`);
* predictor.py (the GC predictor), step.py (one training step), trainer.py (the loop).
"""
