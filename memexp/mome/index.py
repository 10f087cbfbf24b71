"""Candidate search over expert keys: exact torch search or a FAISS index, with staleness protection.

Search never carries gradients (re-scoring of the gathered keys does, in :mod:`memexp.mome.router`).

Kinds (inner-product metric throughout):

- ``exact``: ``q @ K^T`` + ``topk`` in torch, chunked over queries; on the keys' own device (GPU when the
  keys live there). Always up to date, so it is the only choice while keys train (every ANN index
  collapses on freshly learned, near-random keys: docs/algorithms/mome.md, 'Which index').
- ``flat``: ``faiss.IndexFlatIP`` (exact; ``faiss.knn_gpu``-equivalent speed on GPU).
- ``ivf``: ``IndexIVFFlat`` with ``nlist`` lists, ``nprobe`` probed.
- ``hnsw``: ``IndexHNSWFlat`` (CPU only: FAISS has no GPU HNSW).

GPU: when the keys are on CUDA and the installed FAISS has GPU support (the ``faiss-gpu`` extra), ``flat``
and ``ivf`` indexes are moved to the GPU with ``index_cpu_to_gpu`` (temp memory capped by
``gpu_temp_memory``); saving always writes the CPU copy. Without GPU FAISS the search runs on CPU and the
ids are moved back to the keys' device.

A built index remembers two fingerprints of the keys it was built from: a sha256 (saved with the index)
and :func:`keys_checksum`, a 64-bit checksum of the keys' exact bits computed on their own device. Every
:meth:`KeyIndex.search` given the live keys compares the checksum first, so *every* change of the key
table is caught: in-place ops, optimizer steps, ``load_state_dict``, a new tensor, and also writes through
``.data`` or a numpy view, which bypass the tensor's version counter. A stale index is rebuilt
(``on_stale="rebuild"``) or refused (``"error"``), never silently used. The check reads the table once
(measured: benchmarks/RESULTS.md, 'index integrity'); ``rebuild_every`` trades it for a bounded lag.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from decoding.errors import UserError
from decoding.run_folder import atomic_write_dir

KINDS = ("exact", "flat", "ivf", "hnsw")


def keys_fingerprint(keys: torch.Tensor) -> str:
    """sha256 of the keys as contiguous float32 (shape included)."""
    arr = keys.detach().to("cpu", torch.float32).contiguous().numpy()
    h = hashlib.sha256(str(arr.shape).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


_MASK64 = (1 << 64) - 1
# elements per checksum block: cache-sized on CPU, few kernel launches on GPU
_CHECKSUM_BLOCK = {"cpu": 1 << 16, "cuda": 1 << 24}


def _odd_weights(start: int, n: int, device: torch.device) -> torch.Tensor:
    """``(n,)`` int64 odd pseudo-random weights for positions ``start .. start+n-1`` (wrapping arithmetic)."""
    i = torch.arange(start, start + n, dtype=torch.int64, device=device)
    w = i * 6364136223846793005 + 1442695040888963407  # an LCG step; int64 products wrap
    return (w ^ (w >> 29)) | 1


def keys_checksum(keys: torch.Tensor) -> tuple[tuple[int, ...], str, int]:
    """Shape, dtype and a 64-bit checksum of the exact bits of ``keys``, computed on their device.

    ``sum_i a_i * sum_j b_j * bits_ij`` with odd weights ``a`` (int64, per row) and ``b`` (int32, per
    column), in wrapping integer arithmetic. A change of any single element always changes it (an odd
    weight times a non-zero difference is non-zero modulo a power of two); several changes collide only by
    chance (about 2^-60). One read of the table, no copy to the CPU.

    Args:
        keys: ``(E, d)`` of any float dtype.
    """
    x = keys.detach()
    x = x if x.is_contiguous() else x.contiguous()
    x = x.reshape(x.shape[0], -1) if x.dim() != 2 else x
    size = x.element_size()
    bits = x.view(torch.int32) if size >= 4 else x.view(torch.int16 if size == 2 else torch.int8)  # (E, c)
    cols = ((_odd_weights(0, bits.shape[1], x.device) & 0x7FFFFFFF) | 1).to(torch.int32)  # (c,)
    total = torch.zeros((), dtype=torch.int64, device=x.device)
    step = max(1, _CHECKSUM_BLOCK.get(x.device.type, 1 << 20) // max(1, bits.shape[1]))  # rows per block
    for start in range(0, bits.shape[0], step):
        block = bits[start : start + step].to(torch.int32)  # (b, c); products wrap mod 2^32
        rows = (block * cols).sum(1, dtype=torch.int64)  # (b,) exact sums of int32 values
        total += (rows * _odd_weights(start, rows.shape[0], x.device)).sum()  # wraps mod 2^64
    return tuple(keys.shape), str(keys.dtype), int(total) & _MASK64


@torch.no_grad()
def exact_topk(
    queries: torch.Tensor, keys: torch.Tensor, k: int, chunk: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inner-product top-k, chunked over queries so the score matrix stays ``(chunk, E)``.

    Args:
        queries: ``(Q, d)``.
        keys: ``(E, d)``.
        k: neighbours per query.
        chunk: queries scored at once.

    Returns:
        scores ``(Q, k)`` and ids ``(Q, k)`` (int64), best first.
    """
    out_s, out_i = [], []
    keys = keys.detach()
    for start in range(0, queries.shape[0], chunk):
        scores = queries[start : start + chunk].detach().to(keys.dtype) @ keys.t()  # (c, E)
        s, i = scores.topk(k, dim=1)  # (c, k)
        out_s.append(s)
        out_i.append(i)
    return torch.cat(out_s), torch.cat(out_i)


def recall_at_k(approx_ids: torch.Tensor, exact_ids: torch.Tensor) -> float:
    """Mean fraction of the exact top-k ids that the approximate search also returned."""
    a = approx_ids.cpu().numpy()
    e = exact_ids.cpu().numpy()
    hits = sum(len(set(ai.tolist()) & set(ei.tolist())) for ai, ei in zip(a, e))
    return hits / e.size


@dataclass
class IndexConfig:
    """Settings of the candidate search.

    Attributes:
        kind: ``exact`` | ``flat`` | ``ivf`` | ``hnsw``.
        nlist: IVF lists (clamped to the number of keys / 39, FAISS's training minimum).
        nprobe: IVF lists searched per query.
        hnsw_m: HNSW neighbours per node.
        ef_construction: HNSW build beam.
        ef_search: HNSW search beam (raised to k when smaller).
        on_stale: ``rebuild`` or ``error`` when the keys changed since the build.
        use_gpu: move flat/ivf indexes to the GPU when the keys are on CUDA and FAISS supports it.
        gpu_temp_memory: bytes of scratch FAISS may reserve on the GPU (None: FAISS default).
        rebuild_every: for a FAISS index over keys that still train: rebuild after every N searches
            instead of checking the fingerprint (explicit opt-in: results may lag the keys by up to N-1
            searches); 0 checks the fingerprint on every search.
    """

    kind: str = "exact"
    nlist: int = 1024
    nprobe: int = 32
    hnsw_m: int = 32
    ef_construction: int = 40
    ef_search: int = 128
    on_stale: str = "rebuild"
    use_gpu: bool = True
    gpu_temp_memory: int | None = None
    rebuild_every: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"index kind {self.kind!r} is unknown; choose one of {', '.join(KINDS)}")
        if self.on_stale not in ("rebuild", "error"):
            raise UserError(f"index on_stale={self.on_stale!r} is unknown; choose 'rebuild' or 'error'")
        for name in ("nlist", "nprobe", "hnsw_m", "ef_construction", "ef_search"):
            if getattr(self, name) < 1:
                raise UserError(f"index {name}={getattr(self, name)} must be >= 1")
        if self.rebuild_every < 0:
            raise UserError(
                f"index rebuild_every={self.rebuild_every} must be >= 0 (0 = check the fingerprint)"
            )


def _faiss():
    import faiss
    import faiss.contrib.torch_utils  # noqa: F401  (lets Index methods take torch tensors)

    return faiss


def faiss_has_gpu() -> bool:
    """True when the installed FAISS is the GPU build and sees at least one device."""
    try:
        faiss = _faiss()
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class KeyIndex:
    """Top-k search over a key matrix, rebuilt or refused when the keys change.

    Args:
        config: :class:`IndexConfig`.
    """

    def __init__(self, config: IndexConfig | None = None) -> None:
        self.config = config or IndexConfig()
        self.fingerprint: str | None = None
        self.dim: int | None = None
        self.size: int | None = None
        self._keys: torch.Tensor | None = None  # the live tensor searched by ``exact``
        self._checksum: tuple | None = None  # keys_checksum of the keys it was built from
        self._faiss_index = None
        self._gpu_res = None
        self._searches = 0

    # ----------------------------------------------------------------------------- build
    @torch.no_grad()
    def build(self, keys: torch.Tensor) -> KeyIndex:
        """(Re)build from ``keys`` ``(E, d)`` and remember their fingerprint."""
        if keys.dim() != 2:
            raise ValueError(f"keys must be (num_experts, key_dim), got shape {tuple(keys.shape)}")
        self._keys = keys
        self._checksum = keys_checksum(keys)
        self._searches = 0
        self.size, self.dim = keys.shape
        self.fingerprint = keys_fingerprint(keys)
        self._faiss_index = None if self.config.kind == "exact" else self._build_faiss(keys)
        return self

    def _build_faiss(self, keys: torch.Tensor):
        faiss = _faiss()
        cfg = self.config
        x = keys.detach().to("cpu", torch.float32).contiguous()  # (E, d)
        n, d = x.shape
        if cfg.kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif cfg.kind == "ivf":
            nlist = max(1, min(cfg.nlist, n // 39))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(x)
            index.nprobe = min(cfg.nprobe, nlist)
        else:
            index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = cfg.ef_construction
            index.hnsw.efSearch = cfg.ef_search
        index.add(x)
        return self._maybe_to_gpu(index, keys.device)

    def _maybe_to_gpu(self, index, device: torch.device):
        if not (
            self.config.use_gpu and device.type == "cuda" and self.config.kind != "hnsw" and faiss_has_gpu()
        ):
            return index
        faiss = _faiss()
        self._gpu_res = faiss.StandardGpuResources()
        if self.config.gpu_temp_memory is not None:
            self._gpu_res.setTempMemory(self.config.gpu_temp_memory)
        return faiss.index_cpu_to_gpu(self._gpu_res, device.index or 0, index)

    # ----------------------------------------------------------------------------- staleness
    def is_stale(self, keys: torch.Tensor) -> bool:
        """True when ``keys`` differ in any bit from those the index was built from.

        Compares :func:`keys_checksum` (one pass over the table on its device), not the tensor's version
        counter, which writes through ``.data`` or numpy views do not bump.
        """
        if self.fingerprint is None:
            return True
        if tuple(keys.shape) != (self.size, self.dim):
            return True
        checksum = keys_checksum(keys)
        if self._checksum is None:  # loaded from a file: only the sha256 is known
            if keys_fingerprint(keys) != self.fingerprint:
                return True
            self._checksum = checksum
        if checksum != self._checksum:
            return True
        self._keys = keys  # same content: exact search may read this tensor
        return False

    def ensure_fresh(self, keys: torch.Tensor) -> None:
        """Rebuild or refuse (per ``on_stale``) when the index does not match ``keys``.

        Raises:
            ValueError: the key dimension differs from the index's, or the index is stale and
                ``on_stale="error"``.
        """
        if self.dim is not None and keys.shape[-1] != self.dim:
            raise ValueError(
                f"index dimension {self.dim} differs from key dimension {keys.shape[-1]}; the index was "
                "built for other keys: rebuild it with KeyIndex.build(keys)"
            )
        if self.config.kind == "exact" and self._keys is keys:
            return  # exact search reads the live tensor: never stale
        if self.config.rebuild_every > 0 and self.fingerprint is not None:
            self._searches += 1
            if self._searches >= self.config.rebuild_every:
                self.build(keys)
            return
        if not self.is_stale(keys):
            return
        if self.config.on_stale == "error":
            raise ValueError(
                "the expert keys changed since the index was built (fingerprint mismatch); rebuild it "
                "(KeyIndex.build) or set on_stale='rebuild'"
            )
        self.build(keys)

    # ----------------------------------------------------------------------------- search
    @torch.no_grad()
    def search(
        self, queries: torch.Tensor, k: int, keys: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k inner-product search.

        Args:
            queries: ``(Q, d)``.
            k: neighbours.
            keys: the current keys; when given the index is first checked for staleness.

        Returns:
            scores ``(Q, k)`` and int64 ids ``(Q, k)`` on the queries' device.
        """
        if keys is not None:
            self.ensure_fresh(keys)
        if self.fingerprint is None:
            raise RuntimeError("the index is empty: call KeyIndex.build(keys) first")
        if queries.shape[-1] != self.dim:
            raise ValueError(
                f"query dimension {queries.shape[-1]} differs from the index dimension {self.dim}"
            )
        if not 1 <= k <= self.size:
            raise ValueError(f"k={k} must be in 1..{self.size} (the number of keys)")
        if self._faiss_index is None:
            return exact_topk(queries, self._keys, k)
        q = queries.detach().float().contiguous()
        on_gpu_index = self._gpu_res is not None
        if not on_gpu_index:
            q = q.cpu()
        scores, ids = self._faiss_index.search(q, k)
        return scores.to(queries.device), ids.to(queries.device)

    @torch.no_grad()
    def recall(self, queries: torch.Tensor, k: int, keys: torch.Tensor | None = None) -> float:
        """Recall@k of this index against exact search on the same keys."""
        keys = self._keys if keys is None else keys
        _, approx = self.search(queries, k)
        _, exact = exact_topk(queries, keys, k)
        return recall_at_k(approx, exact)

    # ----------------------------------------------------------------------------- persistence
    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write ``index.json`` (+ ``index.faiss``) atomically into ``directory``.

        Raises:
            FileExistsError: ``directory`` exists and ``overwrite`` is False.
        """
        if self.fingerprint is None:
            raise RuntimeError("nothing to save: the index was never built")
        out = Path(directory)
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists; pass overwrite=True or choose a new folder")
        return atomic_write_dir(out, self.write_into)

    def write_into(self, folder: Path) -> None:
        """Write the index files into an existing (temporary) folder."""
        if self.config.kind == "exact" and self._keys is not None:
            self.fingerprint = keys_fingerprint(self._keys)  # exact search follows the live keys
        meta = {
            "config": asdict(self.config),
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "size": self.size,
        }
        if self._faiss_index is not None:
            faiss = _faiss()
            index = self._faiss_index
            if self._gpu_res is not None:
                index = faiss.index_gpu_to_cpu(index)
            faiss.write_index(index, str(folder / "index.faiss"))
        (folder / "index.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | os.PathLike, keys: torch.Tensor) -> KeyIndex:
        """Load an index saved by :meth:`save` for ``keys``; stale ones are rebuilt or refused.

        Raises:
            ValueError: unreadable files, a dimension mismatch, or a stale index with
                ``on_stale="error"``.
        """
        folder = Path(directory)
        try:
            meta = json.loads((folder / "index.json").read_text())
            config = IndexConfig(**meta["config"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"cannot read the index in {folder}: {err}; rebuild it with KeyIndex.build"
            ) from err
        if meta["dim"] != keys.shape[-1]:
            raise ValueError(
                f"index dimension {meta['dim']} differs from key dimension {keys.shape[-1]}: this index "
                "belongs to other keys; rebuild it with KeyIndex.build(keys)"
            )
        index = cls(config)
        index.dim, index.size, index.fingerprint = meta["dim"], meta["size"], meta["fingerprint"]
        if config.kind != "exact":
            try:
                raw = _faiss().read_index(str(folder / "index.faiss"))
            except RuntimeError as err:
                raise ValueError(f"corrupt FAISS index file in {folder}: {err}") from err
            if raw.d != meta["dim"] or raw.ntotal != meta["size"]:
                raise ValueError(
                    f"FAISS index in {folder} has d={raw.d}, n={raw.ntotal}; index.json says "
                    f"d={meta['dim']}, n={meta['size']}: rebuild it"
                )
            index._faiss_index = index._maybe_to_gpu(raw, keys.device)
        index._keys, index._checksum = keys, None
        index.ensure_fresh(keys)
        return index
