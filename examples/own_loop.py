"""A consistency model trained with GC pairs by a loop of your own, from gcflow's parts (2-D toy, CPU).

    python examples/own_loop.py            # 3 000 steps, ~20 s on one CPU core
    python examples/own_loop.py --steps 300

Prints the exact W2 between one-step samples and the data, next to the W2 between two data samples
(the noise floor a perfect generator scores). gcflow's trainer (`gcflow train --preset toy-gc`) is
this loop plus logging, evaluation, checkpoints and resuming.
"""

import argparse

import torch

import gcflow
from gcflow.metrics.wasserstein import w2_exact
from gcflow.networks.mlp import ToyMLP
from gcflow.toy import make_toy

ap = argparse.ArgumentParser(description="a 30-line consistency-training loop on the 2-D toy")
ap.add_argument("--steps", type=int, default=3000)
args = ap.parse_args()
torch.manual_seed(0)
torch.set_num_threads(1)  # tiny ops: a second thread only waits

toy = make_toy("ring8")  # 8 Gaussians on a ring; its sampler returns (n, 2) points
model = gcflow.ConsistencyModel(ToyMLP(dim=2, width=128, depth=3))
ema = gcflow.make_ema(model)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
recipe = gcflow.PairRecipe(kind="ct")  # consistency-training pairs
distance = gcflow.get_distance("pseudo_huber")
gen = torch.Generator().manual_seed(0)

for step in range(args.steps):
    x0 = toy.sample(256, generator=gen, dtype=torch.float32)  # the model runs in float32
    z = torch.randn(x0.shape, generator=gen)
    n = gcflow.ict_num_scales(step, args.steps)  # curriculum: grid intervals N(k)
    sigma_i, sigma_next, weight = gcflow.sample_noise_levels(n, x0.shape[0], generator=gen)
    gc_mask = gcflow.select_gc(x0.shape[0], 0.5, gen)  # GC with probability mu = 0.5 per sample
    pairs = gcflow.build_pairs(recipe, x0, z, sigma_i, sigma_next, weight, gc_mask=gc_mask, predictor=ema)
    loss = gcflow.consistency_loss(model, pairs, distance).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    gcflow.ema_update(ema, model, decay=0.995)

z = gcflow.seeded_normal(range(1000), (2,))
samples = gcflow.sample_onestep(ema, z, sigma_max=80.0)
data, other = toy.sample(1000, generator=gen), toy.sample(1000, generator=gen)
print(
    f"loss {loss.item():.4f}  W2(samples, data) {w2_exact(samples, data):.3f}  noise floor {w2_exact(data, other):.3f}"
)
