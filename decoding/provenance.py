"""Provenance of a result: package versions, the CPU path, and the sha256 of offline-built backbones.

Offline backbones (``tiny:`` language models, the digits ViT) are trained on first use. Their weights
depend on the float path they were trained on: the number of torch threads changes the order of
reductions, and the CPU's vector unit (``torch.backends.cpu.get_cpu_capability()``: AVX512, AVX2...)
changes the kernels. :func:`reproducible_build` pins the first (one thread), so a backbone is the same
whatever thread count the caller runs with; the second cannot be changed after torch is imported, so
every table records :func:`environment` and the backbone's :func:`file_sha256`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("torch", "transformers", "lightning", "peft", "timm", "faiss-cpu", "jsonargparse", "wandb")


@contextmanager
def reproducible_build() -> Iterator[None]:
    """Build with one torch thread and a forked RNG: the result does not depend on the caller's threads,
    and the caller's random state does not move."""
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file (hex)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` ("-" where a package is not installed)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "-"
    return versions


def environment() -> dict[str, object]:
    """Package versions, torch's CPU vector path and thread count: what a result's float path depends on."""
    return {
        **package_versions(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    """``python -m decoding.provenance``: print :func:`environment` as ``name=value`` lines."""
    for key, value in environment().items():
        print(f"{key}={value}")


if __name__ == "__main__":
    main()
