"""Reading Lightning checkpoints safely: a local, complete torch file, loaded as tensors only.

:class:`FactTuning <memexp.fact_tuning.FactTuning>` installs :class:`CheckedCheckpointIO` in its ``setup``, so
the file is checked before anything is restored, and a bad file ends with one line naming it::

    checkpoint runs/x/checkpoints/last.ckpt is empty (0 bytes) ...

A command line that reads ``--ckpt_path`` itself before the trainer starts (LightningCLI reads the
checkpoint's hyper-parameters) should call :func:`read_checkpoint` there, so the refusal comes first.

Checkpoints are always read with ``torch.load(weights_only=True)``: a file that needs unpickling of
arbitrary objects is refused (``--weights_only false`` too), so a checkpoint can never run code.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from decoding.errors import UserError, one_line


def check_checkpoint_file(path: str | Path) -> Path:
    """Refuse a checkpoint path that is remote, missing, empty or not a ``torch.save`` archive.

    Raises:
        UserError: naming the file and what to do.
    """
    name = str(path)
    if name.startswith(("http://", "https://", "s3://", "gs://")):
        raise UserError(
            f"checkpoint {name} is remote; download it and pass the local file to --ckpt_path "
            "(remote checkpoints would be unpickled without the weights-only guard)"
        )
    path = Path(name).expanduser()
    if not path.is_file():
        raise UserError(
            f"checkpoint {path} does not exist; pass a file from <default_root_dir>/checkpoints "
            "(e.g. --ckpt_path last) or start without --ckpt_path"
        )
    size = path.stat().st_size
    if size == 0:
        raise UserError(
            f"checkpoint {path} is empty (0 bytes; its writer was cut short); resume from another "
            "checkpoint in the same folder or start again without --ckpt_path"
        )
    if not zipfile.is_zipfile(path):
        with path.open("rb") as fh:
            if fh.read(4) == b"PK\x03\x04":
                raise UserError(
                    f"checkpoint {path} is truncated or corrupt (a torch.save archive without its end, "
                    f"{size} bytes); resume from another checkpoint in the same folder or start again "
                    "without --ckpt_path"
                )
        raise UserError(
            f"checkpoint {path} is not a torch checkpoint (not a torch.save archive, {size} bytes); "
            "pass a .ckpt file written by memexp fit"
        )
    return path


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a Lightning checkpoint (tensors only) after :func:`check_checkpoint_file`.

    Raises:
        UserError: the file is missing, empty, truncated, not a torch archive, holds pickled objects
            other than tensors, or is not a Lightning checkpoint; the message names the file.
    """
    import torch

    import memexp.mome  # noqa: F401 - registers the MoME configs that MoME checkpoints hold as safe

    path = check_checkpoint_file(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = one_line(str(err).split("\n")[0])[:160]
        raise UserError(
            f"checkpoint {path} holds pickled objects other than tensors ({first}); it was not written "
            "by memexp fit: pass a .ckpt file from a memexp run"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        reason = f"{type(err).__name__}: {one_line(str(err))[:160]}"
        raise UserError(
            f"checkpoint {path} is truncated or corrupt ({reason}); "
            "resume from another checkpoint in the same folder or start again without --ckpt_path"
        ) from None
    if not isinstance(checkpoint, dict) or not {"state_dict", "pytorch-lightning_version"} <= set(checkpoint):
        raise UserError(
            f"checkpoint {path} is not a Lightning checkpoint (no state_dict / version); pass a .ckpt file "
            "written by memexp fit"
        )
    return checkpoint


class CheckedCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that reads through :func:`read_checkpoint` (checked file, tensors only)."""

    def load_checkpoint(
        self, path: Any, map_location: Any = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if weights_only is False:
            raise UserError(
                "--weights_only false is refused: memexp reads checkpoints as tensors only and never "
                "unpickles objects from a file (that could run code); drop the option"
            )
        return read_checkpoint(path, map_location)


def use_checked_checkpoint_io(strategy: Any) -> None:
    """Make ``strategy`` read checkpoints through :class:`CheckedCheckpointIO` (a custom IO is kept)."""
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = CheckedCheckpointIO()
