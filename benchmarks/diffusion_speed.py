"""Training and sampling speed of genmnist's default diffusion U-Net against diffusers.

    pip install -e ".[bench]"        # diffusers, for the peer
    python benchmarks/diffusion_speed.py [--steps 20] [--train-steps 20]

Both networks are timed in the same run, on the same machine and threads, with the same
batch (128, bf16 autocast on a CPU with native bf16 kernels, as genmnist trains; fp32 on
an AVX2-only CPU) and the same sampler step count (64
images). diffusers' ``UNet2DModel`` is configured with the same channels per level, one
block per level and attention at the lowest resolution, so the parameter counts are close;
the table prints both. Ratios above 1 mean genmnist is faster.
"""

from __future__ import annotations

import argparse
import time

import torch

from genmnist.models import create_model
from genmnist.precision import bf16_is_fast


def time_training(forward, params, steps: int, batch: int, autocast: bool) -> float:
    """Optimizer steps per second of ``forward(x, t) -> output`` under an MSE loss."""
    optimizer = torch.optim.Adam(params, lr=1e-4)
    x = torch.randn(batch, 1, 28, 28)
    t = torch.randint(0, 1000, (batch,))
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with ctx:
            loss = forward(x, t).float().pow(2).mean()
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm-up: allocator, kernels
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="sampler steps")
    parser.add_argument("--train-steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    try:
        from diffusers import DPMSolverMultistepScheduler, UNet2DModel
    except ImportError:
        raise SystemExit("diffusers is needed for the peer: pip install -e '.[bench]'") from None

    torch.manual_seed(0)
    ours = create_model("ddpm")
    cfg = ours.config
    theirs = UNet2DModel(
        sample_size=28,
        in_channels=1,
        out_channels=1,
        block_out_channels=tuple(cfg.channels),
        layers_per_block=cfg.blocks_per_level,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=16,
    )
    n_ours = sum(p.numel() for p in ours.unet.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())

    bf16 = bf16_is_fast("cpu")
    train_ours = time_training(
        lambda x, t: ours.unet(x, t), ours.unet.parameters(), args.train_steps, args.batch, bf16
    )
    train_theirs = time_training(
        lambda x, t: theirs(x, t).sample, theirs.parameters(), args.train_steps, args.batch, bf16
    )

    ours.eval()
    theirs.eval()
    sample_ours = best_of(lambda: ours.sample(64, seed=0, sampler="dpmpp-2m", steps=args.steps))

    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"
    )

    @torch.inference_mode()
    def sample_theirs():
        scheduler.set_timesteps(args.steps)
        x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        for t in scheduler.timesteps:
            x = scheduler.step(theirs(x, t).sample, t, x).prev_sample
        return x

    sample_peer = best_of(sample_theirs)

    precision = "bf16 autocast" if bf16 else "fp32"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, training in {precision}")
    print(f"{'':28}{'genmnist':>12}{'diffusers':>12}{'ratio':>8}")
    print(f"{'parameters':28}{n_ours:>12,}{n_theirs:>12,}{n_ours / n_theirs:>8.2f}")
    print(
        f"{'train steps/s (batch ' + str(args.batch) + ')':28}"
        f"{train_ours:>12.2f}{train_theirs:>12.2f}{train_ours / train_theirs:>8.2f}"
    )
    print(
        f"{'sample 64 images, ' + str(args.steps) + ' steps (s)':28}"
        f"{sample_ours:>12.2f}{sample_peer:>12.2f}{sample_peer / sample_ours:>8.2f}"
    )


if __name__ == "__main__":
    main()
