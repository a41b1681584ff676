"""The prior's training data: a dataset encoded once by a trained tokenizer and cached on disk.

`build_token_splits(tokenizer, data, cache_dir)` returns train/validation code grids. The cache
lives in `cache_dir/tokens-<key>/` (a `datasets.DatasetDict` with `codes` and `label` columns
plus `meta.json`); the key covers the tokenizer's weights and config and the data source,
split and transform, so any change there encodes afresh. A cache is built in a temporary
sibling directory and renamed into place once complete. Under several processes each rank
encodes a contiguous shard and the main process assembles and publishes the result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from stage1_tokenizer import ImageTokenizer
from trainkit.config import to_dict
from trainkit.data import DataConfig, ImageData, ImageDataset, array2d_column
from trainkit.devices import check_world_size
from trainkit.files import replace_dir

CACHE_VERSION = 1
META_NAME = "meta.json"
SPLIT_NAMES = {"train": "train", "val": "validation"}  # our split -> stored split


def compact_dtype(codebook_size: int) -> torch.dtype:
    """The smallest dtype holding codes in `[0, codebook_size)`: uint16 up to 65,536 codes, else int32."""
    return torch.uint16 if codebook_size <= 2**16 else torch.int32


class TokenDataset(Dataset):
    """Code grids in memory: `ds[i] -> (codes LongTensor [h, w], label int)`, labels -1 when unlabelled.

    `codes` is kept compact (`[N, h, w]`, uint16 for codebooks up to 65,536 codes).
    """

    def __init__(self, codes: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray | None = None,
                 codebook_size: int | None = None):
        codes = torch.as_tensor(codes)
        if codes.ndim != 3 or codes.is_floating_point():
            raise ValueError(f"expected integer codes [N, h, w], got {codes.dtype} {tuple(codes.shape)}")
        if codebook_size is None:
            codebook_size = int(codes.long().max()) + 1 if codes.numel() else 2
        self.codes = codes if codes.dtype == compact_dtype(codebook_size) else codes.long().to(compact_dtype(codebook_size))
        n = len(codes)
        self.labels = torch.full((n,), -1, dtype=torch.long) if labels is None else torch.as_tensor(labels).long()
        if len(self.labels) != n:
            raise ValueError(f"{n} code grids but {len(self.labels)} labels")
        if codes.numel() and int(self.codes.long().max()) >= codebook_size:
            raise ValueError(f"codes reach {int(self.codes.long().max())}, outside a codebook of {codebook_size}")
        self.codebook_size = codebook_size

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.codes.shape[1:])

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.codes[index].long(), int(self.labels[index])

    def get_batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes `LongTensor [B, h, w]` and labels `[B]` for a sequence/tensor of indices."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        return self.codes[indices].long(), self.labels[indices]

    def __repr__(self) -> str:
        return f"TokenDataset({len(self)} x {list(self.grid)}, {self.codebook_size} codes, {self.codes.dtype})"


@dataclass
class TokenSplits:
    """Encoded train/validation splits plus what the prior needs to know about them."""

    train: TokenDataset
    val: TokenDataset
    num_classes: int | None
    class_names: list[str] | None
    grid: tuple[int, int]
    codebook_size: int
    cache_path: Path  # the directory the splits were read from
    reused: bool  # True when an existing cache was reused


# ----------------------------------------------------------------------------- cache keys


def tokenizer_fingerprint(tokenizer: ImageTokenizer) -> str:
    """sha256 over the tokenizer's class, config and state_dict tensors (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    config = json.dumps(to_dict(tokenizer.config), sort_keys=True, default=str)
    h.update(f"{type(tokenizer).__name__}|{config}".encode())
    for name, tensor in sorted(tokenizer.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _check_compatible(tokenizer: ImageTokenizer, data: DataConfig, image_size: tuple[int, int] | None) -> None:
    cfg = tokenizer.config
    if data.channels != cfg.in_channels:
        raise ValueError(
            f"data.channels={data.channels} but the tokenizer expects in_channels={cfg.in_channels}; "
            f"set data.channels={cfg.in_channels}"
        )
    if image_size is not None and tuple(image_size) != (cfg.image_size, cfg.image_size):
        raise ValueError(
            f"the data gives {image_size[0]}x{image_size[1]} images (data.image_size={data.image_size}) but the "
            f"tokenizer was built for {cfg.image_size}x{cfg.image_size} (tokenizer image_size={cfg.image_size}); "
            f"set data.image_size={cfg.image_size}"
        )


def _cache_key(tokenizer_fp: str, source: str) -> str:
    return hashlib.sha256(f"tokens-v{CACHE_VERSION}|{tokenizer_fp}|{source}".encode()).hexdigest()


def _read_meta(directory: Path, key: str) -> dict | None:
    """The cache's metadata when `directory` holds a complete cache for `key`, else None."""
    try:
        meta = json.loads((directory / META_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return meta if meta.get("key") == key else None


# ----------------------------------------------------------------------------- storage


@contextlib.contextmanager
def _quiet_datasets():
    """Hide the `datasets` progress bars for the tiny cache writes and reads."""
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _to_hf_dataset(codes: np.ndarray, labels: np.ndarray, dtype: str) -> datasets.Dataset:
    features = datasets.Features({
        "codes": datasets.Array2D(codes.shape[1:], dtype),
        "label": datasets.Value("int64"),
    })
    table = pa.table({"codes": array2d_column(codes.astype(dtype)), "label": pa.array(labels.astype(np.int64))})
    return datasets.Dataset(datasets.table.InMemoryTable(table.cast(features.arrow_schema)),
                            info=datasets.DatasetInfo(features=features))


def _from_hf_dataset(rows: datasets.Dataset, grid: tuple[int, int], codebook_size: int) -> TokenDataset:
    column = rows.data.column("codes").combine_chunks()
    if isinstance(column, pa.ExtensionArray):
        column = column.storage
    codes = column.flatten().flatten().to_numpy(zero_copy_only=False)
    codes = np.array(codes, copy=True).reshape(-1, *grid)  # detached from the memory-mapped file
    labels = np.array(rows.data.column("label").to_numpy(), dtype=np.int64)
    return TokenDataset(torch.from_numpy(codes), torch.from_numpy(labels), codebook_size)


def _load_cache(directory: Path, meta: dict, reused: bool) -> TokenSplits:
    grid, k = tuple(meta["grid"]), meta["codebook_size"]
    with _quiet_datasets():
        stored = datasets.load_from_disk(str(directory))
    train, val = (_from_hf_dataset(stored[SPLIT_NAMES[s]], grid, k) for s in ("train", "val"))
    return TokenSplits(train, val, meta["num_classes"], meta["class_names"], grid, k, directory, reused)


def _publish(tmp: Path, final: Path) -> None:
    """Rename the complete `tmp` to `final`, replacing any stale or incomplete directory there."""
    replace_dir(tmp, final)


# ----------------------------------------------------------------------------- encoding


def _shard(n: int, rank: int, world: int) -> tuple[int, int]:
    return n * rank // world, n * (rank + 1) // world


@torch.no_grad()
def _encode_range(tokenizer: ImageTokenizer, images: ImageDataset, start: int, stop: int, batch_size: int,
                  bar: tqdm) -> torch.Tensor:
    """Codes `[stop - start, h, w]` (int32, CPU) of images `start..stop`."""
    device = next(tokenizer.parameters()).device
    h, w = tokenizer.grid_size
    out = torch.empty((stop - start, h, w), dtype=torch.int32)
    for lo in range(start, stop, batch_size):
        hi = min(lo + batch_size, stop)
        batch, _ = images.get_batch(torch.arange(lo, hi))
        codes = tokenizer.encode(batch.to(device))
        if tuple(codes.shape[1:]) != (h, w):
            raise ValueError(f"the tokenizer gave {tuple(codes.shape[1:])} grids, expected {(h, w)}")
        out[lo - start:hi - start] = codes.to("cpu", torch.int32)
        bar.update(hi - lo)
    return out


def _process_state():
    """accelerate's process state, set up as the `Accelerator` created later will see it (CPU runs included)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    check_world_size(state)
    return state


def build_token_splits(
    tokenizer: ImageTokenizer,
    data: DataConfig,
    cache_dir: str | Path,
    batch_size: int = 500,
    progress: bool = True,
) -> TokenSplits:
    """Encode the train/validation images of `data` with `tokenizer`, or reuse the cache for them.

    The cache is `cache_dir/tokens-<first 16 hex of the key>/`; the key covers the tokenizer's
    weights and config and the data source, split and transform.
    """
    from accelerate.utils import broadcast_object_list

    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    factor = tokenizer.config.downsample_factor
    _check_compatible(tokenizer, data, None)
    image_data = ImageData(data, factor)
    source, image_size = image_data.fingerprint(), image_data.image_size
    _check_compatible(tokenizer, data, image_size)
    tokenizer_fp = tokenizer_fingerprint(tokenizer)
    key = _cache_key(tokenizer_fp, source)

    state = _process_state()
    cache_dir = Path(cache_dir)
    plan: list = [key, False, None]  # key, reuse, temporary directory: decided by the main process
    if state.is_main_process:
        final = cache_dir / f"tokens-{key[:16]}"
        if _read_meta(final, key) is not None:
            plan[1] = True
        else:
            cache_dir.mkdir(parents=True, exist_ok=True)
            plan[2] = tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=cache_dir)
    if state.num_processes > 1:
        broadcast_object_list(plan)
    key, reuse, tmp = plan[0], plan[1], Path(plan[2]) if plan[2] else None
    final = cache_dir / f"tokens-{key[:16]}"
    if reuse:
        return _load_cache(final, _read_meta(final, key), reused=True)
    try:
        _build(tokenizer, data, state, tmp, final, key, tokenizer_fp, source, batch_size, progress)
    finally:
        if state.is_main_process and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    state.wait_for_everyone()
    return _load_cache(final, json.loads((final / META_NAME).read_text()), reused=False)


def _build(tokenizer: ImageTokenizer, data: DataConfig, state, tmp: Path, final: Path, key: str,
           tokenizer_fp: str, source: str, batch_size: int, progress: bool) -> None:
    """Encode this rank's shards into `tmp`; the main process assembles them and publishes `final`."""
    splits = ImageData(data, downsample_factor=tokenizer.config.downsample_factor).splits()
    shards = tmp / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    rank, world = state.process_index, state.num_processes
    bounds = {s: _shard(len(getattr(splits, s)), rank, world) for s in SPLIT_NAMES}
    was_training = tokenizer.training
    tokenizer.eval()
    try:
        with tqdm(total=sum(b - a for a, b in bounds.values()), desc="encoding", unit="img",
                  disable=not (progress and state.is_main_process)) as bar:
            for split, (start, stop) in bounds.items():
                codes = _encode_range(tokenizer, getattr(splits, split), start, stop, batch_size, bar)
                save_file({"codes": codes, "index": torch.arange(start, stop, dtype=torch.int64)},
                          str(shards / f"{split}-{rank:05d}.safetensors"))
    finally:
        tokenizer.train(was_training)
    state.wait_for_everyone()

    if state.is_main_process:
        dtype = str(compact_dtype(tokenizer.codebook_size)).removeprefix("torch.")
        grid = tuple(tokenizer.grid_size)
        stored, counts = {}, {}
        for split, name in SPLIT_NAMES.items():
            images = getattr(splits, split)
            codes = np.full((len(images), *grid), -1, dtype=np.int64)
            for r in range(world):
                part = load_file(str(shards / f"{split}-{r:05d}.safetensors"))
                codes[part["index"].numpy()] = part["codes"].numpy()
            if (codes < 0).any():
                raise RuntimeError(f"the encoded shards of the {name} split do not cover every image")
            stored[name] = _to_hf_dataset(codes, images.labels.numpy(), dtype)
            counts[name] = len(images)
        shutil.rmtree(shards)
        with _quiet_datasets():
            datasets.DatasetDict(stored).save_to_disk(str(tmp))
        meta = {
            "key": key,
            "grid": list(grid),
            "codebook_size": tokenizer.codebook_size,
            "num_classes": splits.num_classes,
            "class_names": splits.class_names,
            "tokenizer_fingerprint": tokenizer_fp,
            "data_source": source,
            "counts": counts,
            "dtype": dtype,
            "version": CACHE_VERSION,
        }
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        _publish(tmp, final)
