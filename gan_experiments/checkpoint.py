"""Checkpoints and small result files that survive a crash mid-write, and resume bit-for-bit
on the same device (on CUDA with trainer.deterministic=true; README, "Resume")."""

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder and rename it over `path`: a reader
    (or a crash, or a power cut) sees the old file or the new one, never half of one. The data
    is on disk before the rename, and the rename is on disk before we return."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError as error:
        raise WriteFailed(path, error) from error
    except RuntimeError as error:  # torch's zip writer reports a full disk as a RuntimeError
        if not any(s in str(error) for s in ("unexpected pos", "PytorchStreamWriter", "file write failed")):
            raise
        raise WriteFailed(path, error) from error
    finally:
        tmp.unlink(missing_ok=True)


class WriteFailed(OSError):
    """A result file could not be written (full disk, quota, I/O error); `path` keeps its
    previous content and no temporary file is left."""

    def __init__(self, path: Path, cause: BaseException):
        # torch's zip writer says only "unexpected pos ...": the free space says why.
        reason = getattr(cause, "strerror", None) or "the write stopped short"
        try:
            reason += f"; {shutil.disk_usage(Path(path).parent).free / 1e6:.2f} MB free on its disk"
        except OSError:
            pass
        super().__init__(getattr(cause, "errno", None), reason, str(path))


def save(path: Path, state: dict) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def to_device(tree, device):
    """Every tensor in a nested dict/list moved to `device`; everything else as it is."""
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: to_device(v, device) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_device(v, device) for v in tree)
    return tree


# The random streams a run draws from, each saved and restored by rng_state / set_rng_state.
RNG_STREAMS = ("python", "numpy", "torch", "cuda")


def rng_state(device: torch.device) -> dict:
    """Every RNG the run draws from. On CUDA only the training device's generator: the other
    GPUs of the machine draw nothing for the run, and a resume may see another number of them
    (a Ray job sees one, under its own CUDA_VISIBLE_DEVICES)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def arithmetic(device: torch.device, members: int = 1) -> dict:
    """What a run's numbers depend on beyond its config and seed: the device, the torch build,
    the CPU thread count (convolutions sum in another order on another number of threads), and
    how many runs were trained fused with it (`members`: batched kernels round otherwise). A
    resume on other arithmetic is the same experiment, but no longer bit-exact."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": name, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "deterministic": torch.are_deterministic_algorithms_enabled(), "fused_members": members}


def arithmetic_changes(saved: dict | None, now: dict) -> list[str]:
    """'what: saved -> now' for each way `now` differs from the arithmetic a checkpoint saved."""
    return [f"{key}: {saved[key]} -> {now[key]}" for key in now
            if saved and key in saved and saved[key] != now[key]]


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restores `rng_state`'s generators; the saved CUDA state goes to `device`, the GPU this
    leg trains on, whichever index it had when it was saved. A run saved on the CPU and resumed
    on a GPU (or the reverse) keeps its CPU streams; its CUDA stream starts from the seed."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def flatten(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}
