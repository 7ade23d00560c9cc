"""Train the shapes model from scratch on the CPU: VAE, its decoder tuned for small details, then UNet
and text encoder together.

Fixed seeds; writes imagic_lora/data/shapes/shapes-model.safetensors (fp16).
Run from the repository root: ``python scripts/train_shapes.py`` (about 52 minutes on 2 cores). The
decoder tuning is off by default: ``--tune-decoder-only --decoder-steps 1000`` tunes the decoder of the
weights in ``--out`` in place (6 minutes; the encoder, and so the latents the UNet learnt, stay as they
are) and logs the VAE ceiling of the edit cases before and after.
"""

import argparse
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from imagic_lora.bench.ceiling import vae_ceiling
from imagic_lora.method import diffusion_target
from imagic_lora.shapes.model import build_components, save_weights, shapes_pipeline
from imagic_lora.shapes.world import SIZE, caption, random_details, random_scene, render

OUT = Path("imagic_lora/data/shapes/shapes-model.safetensors")


def dataset(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Images, the mask of each one's 2x2 marker, and the scenes."""
    rng = random.Random(seed)
    pixels, markers, scenes = [], [], []
    for _ in range(count):
        scene, details = random_scene(rng), random_details(rng)
        pixels.append(np.asarray(render(scene, details), dtype=np.float32) / 127.5 - 1)
        marker = np.zeros((1, SIZE, SIZE), dtype=np.float32)
        x, y = details.marker_xy
        marker[:, y : y + 2, x : x + 2] = 1
        markers.append(marker)
        scenes.append(scene)
    images = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()
    return images, torch.from_numpy(np.stack(markers)), scenes


def train_vae(vae, pixels, steps: int, batch: int, log) -> None:
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    vae.train()
    for step in range(steps):
        x = pixels[torch.randint(0, len(pixels), (batch,), generator=generator)]
        posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=None)).sample
        loss = F.mse_loss(reconstruction, x) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step} loss {loss.item():.5f}")
    vae.eval()


def edge_mask(pixels: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """1 on both sides of every colour step between neighbouring pixels: shape outlines and the marker."""
    dy = ((pixels[:, :, 1:] - pixels[:, :, :-1]).abs().sum(1, keepdim=True) > threshold).float()
    dx = ((pixels[:, :, :, 1:] - pixels[:, :, :, :-1]).abs().sum(1, keepdim=True) > threshold).float()
    edges = torch.zeros(pixels.shape[0], 1, *pixels.shape[2:])
    edges[:, :, 1:] += dy
    edges[:, :, :-1] += dy
    edges[:, :, :, 1:] += dx
    edges[:, :, :, :-1] += dx
    return (edges > 0).float()


def tune_decoder(vae, pixels, markers, steps: int, marker_weight: float, log, batch: int = 64,
                 edge_weight: float = 0.0) -> None:
    """Fine-tune the decoder alone with the 4 marker pixels (and, with ``edge_weight``, shape outlines) weighted up.

    Trained on the plain 1024-pixel average, the decoder blurs a detail that is 0.4 % of the image: the
    round trip kept the marker in 71 % of the edit cases, so the edit benchmark could not score what an
    edit keeps. The encoder is frozen, so the latents (and a UNet trained on them) stay valid.
    """
    with torch.no_grad():
        latents = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in pixels.split(500)])
    weights = 1 + marker_weight * markers + edge_weight * edge_mask(pixels)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    optimizer = torch.optim.AdamW(params, lr=3e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    generator = torch.Generator().manual_seed(1)
    vae.train()
    for step in range(steps):
        index = torch.randint(0, len(pixels), (batch,), generator=generator)
        reconstruction = vae.decode(latents[index]).sample
        loss = (weights[index] * (reconstruction - pixels[index]) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"decoder step {step} loss {loss.item():.5f}")
    vae.eval()


def check_ceiling(vae, minimum: float, log) -> None:
    ceiling = vae_ceiling(vae)
    log(f"VAE ceiling on 200 edit cases: input preserved {ceiling['input_preserved']:.1%}, "
        f"truth both {ceiling['truth_both']:.1%}, misses {ceiling['misses']}")
    if min(ceiling["input_preserved"], ceiling["truth_both"]) < minimum:
        raise SystemExit(f"the VAE ceiling is under {minimum:.0%}: nothing written")


@torch.no_grad()
def encode_all(vae, pixels) -> torch.Tensor:
    return torch.cat([vae.encode(chunk).latent_dist.mean for chunk in pixels.split(512)])


def train_unet(components, latents, captions, steps: int, batch: int, log, checkpoint) -> None:
    unet, text_encoder, tokenizer, scheduler = (components[k] for k in ("unet", "text_encoder", "tokenizer",
                                                                         "scheduler"))
    ids = tokenizer([*captions, ""], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    empty = ids[-1]
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=5e-4, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 200) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    generator = torch.Generator().manual_seed(2)
    unet.train()
    text_encoder.train()
    for step in range(steps):
        index = torch.randint(0, len(latents), (batch,), generator=generator)
        tokens = ids[index].clone()
        tokens[torch.rand(batch, generator=generator) < 0.1] = empty  # for classifier-free guidance
        x0 = latents[index]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
        prediction = unet(scheduler.add_noise(x0, noise, t), t, text_encoder(tokens).last_hidden_state).sample
        loss = F.mse_loss(prediction, diffusion_target(scheduler, x0, noise, t))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"unet step {step} loss {loss.item():.5f} lr {schedule.get_last_lr()[0]:.2e}")
        if step % 1000 == 999:
            checkpoint()
    unet.eval()
    text_encoder.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=40000)
    parser.add_argument("--vae-steps", type=int, default=1200)
    parser.add_argument("--unet-steps", type=int, default=4800)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--vae-from", type=Path, default=None,
                        help="Reuse the VAE (and its scaling factor) of an earlier output instead of training it.")
    parser.add_argument("--decoder-steps", type=int, default=0,
                        help="Tune the decoder for small details this many steps (0: not at all). 1000 raised the "
                        "VAE ceiling to 98.5 %% but lowered bench sanity's shape rate to 78 %% (target 80 %%).")
    parser.add_argument("--decoder-images", type=int, default=20000)
    parser.add_argument("--marker-weight", type=float, default=20.0)
    parser.add_argument("--edge-weight", type=float, default=0.0,
                        help="Extra loss weight on shape outlines while tuning the decoder.")
    parser.add_argument("--min-ceiling", type=float, default=0.0,
                        help="Stop, writing nothing, if the VAE round trip keeps less than this of the edit cases "
                        "(issue 11 asks 0.97).")
    parser.add_argument("--tune-decoder-only", action="store_true",
                        help="Tune the decoder of the weights in --out and write them back; nothing else changes.")
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - start:7.1f}s] {message}", flush=True)

    if args.tune_decoder_only:
        tune_shipped_decoder(args, log)
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)  # the checkpoints every 1 000 steps go beside it
    components = build_components()
    pixels, markers, scenes = dataset(args.images, seed=0)
    log(f"rendered {len(pixels)} images")
    if args.vae_from:
        tensors = load_file(str(args.vae_from))
        components["vae"].load_state_dict({k[4:]: v.float() for k, v in tensors.items() if k.startswith("vae.")})
        log(f"loaded the VAE from {args.vae_from}")
    else:
        train_vae(components["vae"], pixels, args.vae_steps, args.batch, log)
    if args.decoder_steps:
        tune_decoder(components["vae"], pixels[: args.decoder_images], markers[: args.decoder_images],
                     args.decoder_steps, args.marker_weight, log, edge_weight=args.edge_weight)
    check_ceiling(components["vae"], args.min_ceiling, log)
    latents = encode_all(components["vae"], pixels)
    scaling = float(1 / latents.std())
    components["vae"].register_to_config(scaling_factor=scaling)
    latents = latents * scaling
    log(f"encoded latents {tuple(latents.shape)}, scaling factor {scaling:.4f}")
    rng = random.Random(3)
    captions = [caption(scene, rng.randrange(4)) for scene in scenes]
    train_unet(components, latents, captions, args.unet_steps, args.batch, log,
               lambda: save_weights(components, args.out.with_suffix(".partial.safetensors")))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(components, args.out)
    log(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)")


def tune_shipped_decoder(args, log) -> None:
    if args.decoder_steps <= 0:
        raise SystemExit("--tune-decoder-only needs --decoder-steps N (1000 was measured)")
    pipe = shapes_pipeline(args.out)
    pixels, markers, _ = dataset(args.decoder_images, seed=0)
    check_ceiling(pipe.vae, 0.0, log)
    tune_decoder(pipe.vae, pixels, markers, args.decoder_steps, args.marker_weight, log, edge_weight=args.edge_weight)
    check_ceiling(pipe.vae, args.min_ceiling, log)
    save_weights({"vae": pipe.vae, "unet": pipe.unet, "text_encoder": pipe.text_encoder}, args.out)
    check_ceiling(shapes_pipeline(args.out).vae, args.min_ceiling, log)  # as loaded back from fp16
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
