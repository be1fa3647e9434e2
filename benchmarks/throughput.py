"""Training throughput of this framework against the loops it grew from, side by side in one
process, on identical models, data and batch size.

(a) seed 000's loop as written: torchvision MNIST files read through a DataLoader with per-item
    ToTensor/Normalize, the MLP G and D, BCEWithLogitsLoss, .item() for the epoch print;
    against `python -m gan_experiments model=mlp data=mnist loss=nonsat`.
(b) a pytorch/examples dcgan/main.py-style loop (DataLoader with per-item transforms, BCE on
    D's output, D(x) and D(G(z)) read with .item() every step) on the very same DCGAN modules;
    against `python -m gan_experiments model=dcgan data=mnist loss=nonsat`.

Each side trains for the same number of steps after a warm-up; images/s counts real images seen
by G's updates (batch size x steps). The framework's number is the slope of `train()` wall time
between a short and a long run, so its one-off setup (TensorBoard writer, model build) is not
counted, but its logging every `log_every` steps is.

    python benchmarks/throughput.py --quick          # about a minute on a 2-core CPU
    python benchmarks/throughput.py --device cuda    # full run on a GPU
"""

import argparse
import platform
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gan_experiments.config import register_configs  # noqa: E402
from gan_experiments.train import build, train  # noqa: E402


def write_mnist(root: Path, n: int) -> None:
    """MNIST-format IDX files with random strokes, so torchvision's MNIST class reads them."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("t10k", 100)):
        images = (rng.random((count, 28, 28)) > 0.8).astype(np.uint8) * 255
        labels = rng.integers(0, 10, count).astype(np.uint8)
        for name, array in ((f"{split}-images-idx3-ubyte", images), (f"{split}-labels-idx1-ubyte", labels)):
            header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
            with open(raw / name, "wb") as f:
                f.write(header + array.tobytes())


def conf_model(option: str, data_shape: tuple[int, ...]):
    """G and D as conf/model/<option>.yaml builds them: the defaults live there."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={option}"])
    return build(cfg.model, data_shape=data_shape, is_image=True)


def seed_loader(root: Path, batch: int, size: int | None) -> DataLoader:
    pipeline = ([transforms.Resize(size)] if size else []) + [
        transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))]
    dataset = datasets.MNIST(str(root), train=True, download=False, transform=transforms.Compose(pipeline))
    return DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True)


def seed_000_loop(root, device, batch, steps) -> float:
    """Seed 000's training loop, as written (its MLPs are gan_experiments' mlp defaults)."""
    latent_dim, img_dim = 100, 784
    generator, discriminator = conf_model("mlp", (1, 28, 28))  # latent_dim 100 there too
    generator, discriminator = generator.to(device), discriminator.to(device)
    optimizer_G = torch.optim.Adam(generator.parameters(), lr=2e-4)
    optimizer_D = torch.optim.Adam(discriminator.parameters(), lr=2e-4)
    criterion = nn.BCEWithLogitsLoss()
    dataloader = seed_loader(root, batch, None)
    done, start = 0, None
    while done < steps:
        for real_imgs, _ in dataloader:
            if done == WARMUP:
                sync(device)
                start = time.perf_counter()
            real_imgs = real_imgs.view(-1, img_dim).to(device)
            batch_size = real_imgs.size(0)
            z = torch.randn(batch_size, latent_dim, device=device)
            fake_imgs = generator(z)
            optimizer_D.zero_grad()
            real_labels = torch.ones(batch_size, device=device)
            d_loss_real = criterion(discriminator(real_imgs.view(-1, 1, 28, 28)), real_labels)
            fake_labels = torch.zeros(batch_size, device=device)
            d_loss_fake = criterion(discriminator(fake_imgs.detach()), fake_labels)
            d_loss = d_loss_real + d_loss_fake
            d_loss.backward()
            optimizer_D.step()
            optimizer_G.zero_grad()
            g_loss = criterion(discriminator(fake_imgs), real_labels)
            g_loss.backward()
            optimizer_G.step()
            done += 1
            if done >= steps:
                break
        print(f"  seed loop epoch end | D Loss: {d_loss.item():.4f} | G Loss: {g_loss.item():.4f}", flush=True)
    sync(device)
    return batch * (steps - WARMUP) / (time.perf_counter() - start)


def examples_dcgan_loop(root, device, batch, steps, size) -> float:
    """pytorch/examples dcgan/main.py's loop on gan_experiments' DCGAN modules."""
    netG, netD = conf_model("dcgan", (1, size, size))
    netG, netD = netG.to(device), netD.to(device)
    criterion = nn.BCEWithLogitsLoss()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    dataloader = seed_loader(root, batch, size)
    real_label, fake_label = 1.0, 0.0
    done, start = 0, None
    while done < steps:
        for data in dataloader:
            if done == WARMUP:
                sync(device)
                start = time.perf_counter()
            netD.zero_grad()
            real_cpu = data[0].to(device)
            batch_size = real_cpu.size(0)
            label = torch.full((batch_size,), real_label, dtype=real_cpu.dtype, device=device)
            output = netD(real_cpu)
            errD_real = criterion(output, label)
            errD_real.backward()
            D_x = output.sigmoid().mean().item()
            noise = torch.randn(batch_size, 100, 1, 1, device=device)
            fake = netG(noise)
            label.fill_(fake_label)
            output = netD(fake.detach())
            errD_fake = criterion(output, label)
            errD_fake.backward()
            D_G_z1 = output.sigmoid().mean().item()
            errD = errD_real + errD_fake
            optimizerD.step()
            netG.zero_grad()
            label.fill_(real_label)
            output = netD(fake)
            errG = criterion(output, label)
            errG.backward()
            D_G_z2 = output.sigmoid().mean().item()
            optimizerG.step()
            done += 1
            if done % 100 == 0:
                print(f"  examples loop [{done}/{steps}] Loss_D: {errD.item():.4f} Loss_G: {errG.item():.4f} "
                      f"D(x): {D_x:.4f} D(G(z)): {D_G_z1:.4f} / {D_G_z2:.4f}", flush=True)
            if done >= steps:
                break
    sync(device)
    return batch * (steps - WARMUP) / (time.perf_counter() - start)


def framework(root, device, batch, steps, overrides, out: Path) -> float:
    """Slope of train()'s wall time between WARMUP and `steps` generator steps."""
    common = [f"data.root={root}", f"trainer.device={device}", f"trainer.batch_size={batch}",
              "trainer.progress=false", "trainer.sample_every=1000000", "trainer.checkpoint_every=1000000",
              "eval.every=0", "eval.classifier=false", "eval.inception=false", *overrides]
    times = {}
    for n in (WARMUP, steps):
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=[*common, f"trainer.steps={n}"])
        start = time.perf_counter()
        train(cfg, out / f"{overrides[0]}-{n}-{time.time_ns()}")
        sync(device)
        times[n] = time.perf_counter() - start
    return batch * (steps - WARMUP) / (times[steps] - times[WARMUP])


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


WARMUP = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="a one-minute version")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per side")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dcgan-size", type=int, default=28)
    parser.add_argument("--fast", default="", help="extra overrides for the framework side, comma-separated "
                        "(e.g. trainer.precision=bf16,trainer.channels_last=true,trainer.compile=true)")
    args = parser.parse_args()
    quick_steps = {"cpu": (150, 60), "cuda": (300, 300)}[torch.device(args.device).type]
    mlp_steps, dcgan_steps = (args.steps, args.steps) if args.steps else (
        quick_steps if args.quick else (4 * quick_steps[0], 4 * quick_steps[1]))
    register_configs()
    fast = [o for o in args.fast.split(",") if o]
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else platform.processor() or platform.machine()}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp) / "data", Path(tmp) / "runs"
        write_mnist(root, 10000)
        rows = []
        torch.manual_seed(0)
        seed = seed_000_loop(root, args.device, args.batch, mlp_steps + WARMUP)
        ours = framework(root, args.device, args.batch, mlp_steps + WARMUP,
                         ["model=mlp", "data=mnist", "loss=nonsat", "optimizer.g.betas=[0.9,0.999]",
                          "optimizer.d.betas=[0.9,0.999]", *fast], out)
        rows.append(("(a) mlp, 28x28", "seed 000 loop", seed, ours))
        torch.manual_seed(0)
        examples = examples_dcgan_loop(root, args.device, args.batch, dcgan_steps + WARMUP, args.dcgan_size)
        ours = framework(root, args.device, args.batch, dcgan_steps + WARMUP,
                         ["model=dcgan", "data=mnist", f"data.image_size={args.dcgan_size}", "loss=nonsat", *fast],
                         out)
        rows.append((f"(b) dcgan, {args.dcgan_size}x{args.dcgan_size}", "pytorch/examples loop", examples, ours))
    print("\n| comparison | baseline | baseline img/s | gan_experiments img/s | ratio |\n|---|---|---|---|---|")
    for name, baseline, base_rate, our_rate in rows:
        print(f"| {name} | {baseline} | {base_rate:,.0f} | {our_rate:,.0f} | {our_rate / base_rate:.2f}x |")
    print(f"\nsteps timed: mlp {mlp_steps}, dcgan {dcgan_steps} (after {WARMUP} warm-up); "
          f"framework overrides: {fast or 'none'}")


if __name__ == "__main__":
    main()
