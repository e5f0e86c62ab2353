"""Training from a teacher: EDM denoising loss, teacher velocities for CD, ECT's continuous-time
schedule, and the safe import of NVlabs EDM network pickles.

* `edm_loss`: EDM's denoiser D(x, σ) and its loss (lognormal σ, λ(σ) = 1/c_out²).
* `velocity`: the PF-ODE velocity v = (x − D(x, σ))/σ of a denoiser, as a `PointFn` for CD pairs.
* `ect`: Easy Consistency Tuning's level sampling, r(t) mapping, stage schedule, weighting.
* `edm_pickle`: a restricted unpickler that reads EDM's pickles without executing their code.
* `import_edm`: EDM DDPM++ (SongUNet) parameter names -> gcflow's SongUNet, written as safetensors.
"""
