"""Seeds -> perturbation directions, regenerated identically in any process.

A direction `u` for a list of parameters is drawn from ONE explicit CPU generator seeded with
the perturbation's seed, parameter by parameter in a fixed order, so any replica that knows the
seed and the parameter order regenerates it bit for bit. Nothing here touches the global RNG.
Directions are drawn on the CPU and moved to the parameter's device: slower on a GPU than a CUDA
generator, but the same numbers on every device, so a CPU server replica matches GPU clients.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

Distribution = str  # "gaussian" | "rademacher"
SeedList = Sequence[int] | np.ndarray  # perturbation seeds: ints, or derive_seeds' uint64 array


def derive_seeds(run_seed: int, round_idx: int, step: int, count: int, stream: int = 0) -> np.ndarray:
    """`count` perturbation seeds for (run, round, local step), as uint64.

    SeedSequence mixes its entropy words so distinct (run, round, step, stream) tuples never
    collide the way affine formulas such as `seed * (i + 17) + i` can.
    """
    ss = np.random.SeedSequence([run_seed, stream, round_idx, step])
    return ss.generate_state(count, dtype=np.uint64) >> np.uint64(1)  # 63 bits: a valid torch seed


def directions(
    params: Sequence[torch.Tensor], seed: int, distribution: Distribution = "gaussian"
) -> Iterator[torch.Tensor]:
    """Yield u, one tensor per parameter (same shape), from the generator seeded with `seed`."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    for p in params:
        if distribution == "gaussian":
            u = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        elif distribution == "rademacher":
            u = torch.randint(0, 2, p.shape, generator=gen, dtype=torch.int8).to(torch.float32).mul_(2).sub_(1)
        else:
            raise ValueError(f"unknown perturbation distribution {distribution!r}")
        yield u.to(device=p.device, dtype=p.dtype)


def perturbed_copies(
    params: dict[str, torch.Tensor], seed: int, scale: float, distribution: Distribution = "gaussian"
) -> dict[str, torch.Tensor]:
    """{name: p + scale * u}: out of place, so the originals stay bit-exact."""
    names = list(params)
    us = directions([params[n] for n in names], seed, distribution)
    return {n: params[n].detach() + scale * u for n, u in zip(names, us)}


@torch.no_grad()
def set_perturbed_(
    params: Sequence[torch.Tensor],
    base: Sequence[torch.Tensor],
    seed: int,
    scale: float,
    distribution: Distribution = "gaussian",
) -> None:
    """In place: p <- base + scale * u for each (p, base), the very numbers `perturbed_copies` gives,
    written into existing storage (restore with `p.copy_(base)`: bit-exact, unlike `perturb_`)."""
    for p, b, u in zip(params, base, directions(params, seed, distribution)):
        torch.add(b, u.mul_(scale), out=p)


@torch.no_grad()
def stacked_perturbations(
    params: dict[str, torch.Tensor], seeds: SeedList, scale: float, distribution: Distribution = "gaussian"
) -> dict[str, torch.Tensor]:
    """{name: (len(seeds), *shape)} whose row i is p + scale * u_{seeds[i]}: the parameter sets of
    `len(seeds)` probes, to evaluate in one `torch.func.vmap`ped forward. Costs len(seeds) copies."""
    names = list(params)
    out = {
        n: torch.empty((len(seeds), *params[n].shape), dtype=params[n].dtype, device=params[n].device) for n in names
    }
    for i, seed in enumerate(seeds):
        for n, u in zip(names, directions([params[n] for n in names], int(seed), distribution)):
            torch.add(params[n].detach(), u.mul_(scale), out=out[n][i])
    return out


@torch.no_grad()
def perturb_(params: Sequence[torch.Tensor], seed: int, scale: float, distribution: Distribution = "gaussian") -> None:
    """In place: p += scale * u (MeZO's memory-lean form; p - u + u is not bit-exact)."""
    for p, u in zip(params, directions(params, seed, distribution)):
        p.add_(u, alpha=scale)
