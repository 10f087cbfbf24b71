"""Image sources for task sequences, all loaded into memory as tensors (no download, ever).

- ``digits``: scikit-learn's bundled 8x8 digits (1797 real images, values 0-16 -> [0, 1]).
- ``synthetic``: seeded class prototypes plus noise, for fast tests.
- ``cifar100``: the torchvision folder layout ``<root>/cifar-100-python/{train,test}`` (pickles, read by
  a restricted unpickler that builds only plain containers and numpy arrays: a crafted file cannot run
  code).
- ``image folders``: ``<root>/{train,test}/<class>/*.png`` (5-datasets: one such folder per data set).
- ``core50``: ``<root>/s<session>/o<object>/*.png`` (the core50_128x128 layout).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from decoding.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass
class ImageSet:
    """Images (n, C, H, W) float in [0, 1] and integer labels (n,)."""

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"{self.x.shape[0]} images but {self.y.shape[0]} labels.")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, mask: Tensor) -> ImageSet:
        """Rows where ``mask`` (bool (n,) or indices) selects."""
        return ImageSet(self.x[mask], self.y[mask])


def load_digits_splits(
    pretrain_fraction: float = 0.3, test_size: float = 0.3
) -> tuple[ImageSet, ImageSet, ImageSet]:
    """scikit-learn digits as (pretrain, train, test), stratified, disjoint, always with random_state 0.

    ``pretrain_fraction`` of all samples (every class) is reserved first for backbone pretraining
    (``prompt_pool.pretrain``); the rest is split ``1 - test_size`` / ``test_size``. The split is fixed
    (not seeded per run) so that the pretraining images can never leak into a task.
    """
    seed = 0
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None]  # (1797, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.long)
    idx = np.arange(len(y))
    pre = np.array([], dtype=int)
    if pretrain_fraction > 0:
        pre, idx = train_test_split(idx, train_size=pretrain_fraction, stratify=y[idx], random_state=seed)
    tr, te = train_test_split(idx, test_size=test_size, stratify=y[idx], random_state=seed)
    return tuple(ImageSet(x[torch.as_tensor(i)], y[torch.as_tensor(i)]) for i in (pre, tr, te))  # type: ignore


def synthetic_splits(
    num_classes: int = 10,
    train_per_class: int = 20,
    test_per_class: int = 10,
    image_size: int = 8,
    channels: int = 1,
    noise: float = 0.3,
    seed: int = 0,
) -> tuple[ImageSet, ImageSet]:
    """Seeded synthetic images: a random prototype per class plus Gaussian noise, clipped to [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(num_classes, channels, image_size, image_size, generator=g)  # (C, ch, H, W)

    def draw(per_class: int) -> ImageSet:
        y = torch.arange(num_classes).repeat_interleave(per_class)
        x = protos[y] + noise * torch.randn(len(y), channels, image_size, image_size, generator=g)
        return ImageSet(x.clamp(0, 1), y)

    return draw(train_per_class), draw(test_per_class)


# The only globals a CIFAR-100 python file may name: numpy's array/dtype reconstruction (every pickle
# protocol, numpy 1.x and 2.x module paths) and the byte decoding of protocol-2 pickles. Containers,
# strings, bytes and numbers need no global at all.
SAFE_PICKLE_GLOBALS = frozenset(
    {(m, "_reconstruct") for m in ("numpy.core.multiarray", "numpy._core.multiarray")}
    | {(m, "scalar") for m in ("numpy.core.multiarray", "numpy._core.multiarray")}
    | {(m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")}
    | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
)


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that admits plain containers and numpy arrays only (no other class, no function).

    ``pickle.load`` calls whatever callable a file names (``os.system``...); this one refuses every
    global outside :data:`SAFE_PICKLE_GLOBALS` before anything is called.
    """

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in SAFE_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}")


def safe_unpickle(path: Path) -> object:
    """Read a data pickle with :class:`SafeUnpickler` (Python 2 strings decoded as latin-1)."""
    try:
        with open(path, "rb") as f:
            return SafeUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise UserError(
            f"refused to read {str(path)!r}: {err}; a CIFAR-100 python file holds only dicts, lists, "
            "strings, numbers and numpy arrays. Replace it with the original cifar-100-python files."
        ) from None


def load_cifar100(root: str | Path) -> tuple[ImageSet, ImageSet]:
    """Split-CIFAR-100 source from torchvision's extracted layout (no integrity check, no download)."""
    base = Path(root) / "cifar-100-python"
    out = []
    for split in ("train", "test"):
        f = base / split
        if not f.is_file():
            raise UserError(
                f"CIFAR-100 file {str(f)!r} not found. Expected torchvision's layout: "
                f"<root>/cifar-100-python/{{train,test}} (pickles with 'data' (n, 3072) uint8 "
                "and 'fine_labels')."
            )
        d = safe_unpickle(f)
        if not isinstance(d, dict) or "data" not in d or "fine_labels" not in d:
            raise UserError(
                f"{str(f)!r} lacks 'data'/'fine_labels'; point data.root at the folder that holds "
                "torchvision's extracted cifar-100-python/ (a CIFAR-100 python pickle)."
            )
        data, labels = np.asarray(d["data"]), np.asarray(d["fine_labels"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise UserError(
                f"{str(f)!r} holds data {data.dtype} {data.shape} and {len(labels)} labels; CIFAR-100 has "
                "uint8 (n, 3072) images and n labels. Replace it with the original cifar-100-python files."
            )
        x = torch.as_tensor(data.reshape(-1, 3, 32, 32)).float() / 255.0
        out.append(ImageSet(x, torch.as_tensor(labels.astype(np.int64))))
    return out[0], out[1]


def _read_image(path: Path, size: tuple[int, int] | None, channels: int) -> Tensor:
    """One image as (C, H, W) floats in [0, 1]; at its own size (``size`` None) or resized to (W, H)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB" if channels == 3 else "L")
        if size is not None and im.size != size:
            im = im.resize(size, Image.BILINEAR)
        arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.as_tensor(arr).reshape(arr.shape[0], arr.shape[1], channels).permute(2, 0, 1)  # (C, H, W)


def _read_images(files: list[Path], image_size: int | None, channels: int) -> Tensor:
    """Images stacked (n, C, H, W): at ``image_size`` when given, else at the first image's own size.

    Stored images keep their resolution by default (CORe50 stays 128 px) and are resized once per
    sample to the backbone's input size when read (``TaskDataset``); shrinking them here first (as an
    earlier fixed 32 px did) would throw detail away before an upscale to 224.
    """
    size = (image_size, image_size) if image_size else None
    xs = []
    for f in files:
        x = _read_image(f, size, channels)
        size = size or (x.shape[2], x.shape[1])  # (W, H) of the first image: the set's size
        xs.append(x)
    return torch.stack(xs)


def _class_dirs(folder: Path, expected: str) -> list[Path]:
    if not folder.is_dir():
        raise UserError(f"folder {str(folder)!r} not found; expected layout: {expected}.")
    dirs = sorted(p for p in folder.iterdir() if p.is_dir())
    if not dirs:
        raise UserError(f"{str(folder)!r} has no class sub-folders; expected layout: {expected}.")
    return dirs


def load_image_folder(
    root: str | Path, image_size: int | None = None, channels: int = 3
) -> tuple[ImageSet, ImageSet]:
    """``<root>/{train,test}/<class>/*.png``; classes are the sorted sub-folder names of train/.

    Images keep the size of the first one (``image_size`` None) or are resized to ``image_size``.
    """
    root, layout = Path(root), "<root>/{train,test}/<class_name>/<image>.png"
    classes = [p.name for p in _class_dirs(root / "train", layout)]
    out = []
    for split in ("train", "test"):
        dirs = _class_dirs(root / split, layout)
        unknown = sorted({p.name for p in dirs} - set(classes))
        if unknown:
            raise UserError(
                f"{str(root / split)!r} has classes {unknown} that train/ lacks; layout: {layout}."
            )
        files, ys = [], []
        for d in dirs:
            for f in sorted(d.iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(f)
                    ys.append(classes.index(d.name))
        if not files:
            raise UserError(
                f"no images ({', '.join(IMAGE_SUFFIXES)}) under {str(root / split)!r}; layout: {layout}."
            )
        out.append(ImageSet(_read_images(files, image_size, channels), torch.tensor(ys)))
    return out[0], out[1]


def load_core50(
    root: str | Path, sessions: list[int], image_size: int | None = None, channels: int = 3
) -> list[ImageSet]:
    """One ImageSet per CORe50 session ``<root>/s<k>/o<j>/*.png``; label = object id - 1 (0..49).

    Images stay 128 px (``image_size`` None; 196 KB each as float32) unless ``image_size`` is given.
    """
    root, layout = Path(root), "<root>/s<session 1-11>/o<object 1-50>/<image>.png (core50_128x128)"
    out = []
    for s in sessions:
        files, ys = [], []
        for d in _class_dirs(root / f"s{s}", layout):
            if not (d.name.startswith("o") and d.name[1:].isdigit()):
                raise UserError(f"unexpected folder {str(d)!r}; expected object folders o1..o50 ({layout}).")
            for f in sorted(d.iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(f)
                    ys.append(int(d.name[1:]) - 1)
        if not files:
            raise UserError(f"session folder {str(root / f's{s}')!r} holds no images; layout: {layout}.")
        out.append(ImageSet(_read_images(files, image_size, channels), torch.tensor(ys)))
    return out
