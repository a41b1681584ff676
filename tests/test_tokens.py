"""The token dataset: encoding with a tokenizer, the on-disk cache and its keys, multi-process builds."""

import hashlib
import json
import shutil
import sys
import textwrap

import pytest
import torch
from conftest import free_port, run_module

from stage1_tokenizer import ImageTokenizer, ImageTokenizerConfig
from stage2_prior.tokens import TokenDataset, build_token_splits, tokenizer_fingerprint
from trainkit.data import DataConfig, ImageData

MAX_TRAIN = 300


def make_tokenizer(seed: int = 0, in_channels: int = 1) -> ImageTokenizer:
    torch.manual_seed(seed)
    return ImageTokenizer(ImageTokenizerConfig(
        in_channels=in_channels, image_size=8, base_channels=8, channel_mult=[1, 2], num_downsamples=1,
        latent_channels=8, codebook_size=32, vq_kmeans_init=False,
    )).eval()


def digest(splits) -> str:
    h = hashlib.sha256()
    for ds in (splits.train, splits.val):
        h.update(ds.codes.long().numpy().tobytes())
        h.update(ds.labels.numpy().tobytes())
    return h.hexdigest()


@pytest.fixture
def data(digits_parquet) -> DataConfig:
    return DataConfig(dataset=str(digits_parquet), max_train_samples=MAX_TRAIN)


@pytest.fixture
def tokenizer() -> ImageTokenizer:
    return make_tokenizer()


def forbid(monkeypatch):
    """Make encoding and image loading raise: a cache hit must need neither."""
    def fail(*args, **kwargs):
        raise AssertionError("a cache hit encoded or loaded images")
    monkeypatch.setattr(ImageTokenizer, "encode", fail)
    monkeypatch.setattr(ImageData, "split", fail)
    monkeypatch.setattr(ImageData, "splits", fail)


def test_codes_match_tokenizer_and_cache_is_reused(tokenizer, data, tmp_path, monkeypatch):
    first = build_token_splits(tokenizer, data, tmp_path, batch_size=64, progress=False)
    images = ImageData(data, downsample_factor=2).splits()
    assert not first.reused and first.cache_path.parent == tmp_path and first.cache_path.name.startswith("tokens-")
    assert (first.grid, first.codebook_size, first.num_classes) == ((4, 4), 32, 10)
    assert first.class_names == [str(i) for i in range(10)]
    for ds, imgs in ((first.train, images.train), (first.val, images.val)):
        assert ds.codes.dtype == torch.uint16 and ds.codes.shape == (len(imgs), 4, 4)
        expected = torch.cat([tokenizer.encode(imgs.get_batch(range(i, min(i + 64, len(imgs))))[0])
                              for i in range(0, len(imgs), 64)])
        assert torch.equal(ds.codes.long(), expected)
        assert torch.equal(ds.labels, imgs.labels)
    assert len(first.train) == MAX_TRAIN and len(first.val) == 297  # the 297 test images
    codes, label = first.train[5]
    assert codes.dtype == torch.long and codes.shape == (4, 4) and label == int(images.train.labels[5])
    meta = json.loads((first.cache_path / "meta.json").read_text())
    assert meta["data_source"] == images.source
    assert meta["tokenizer_fingerprint"] == tokenizer_fingerprint(tokenizer)
    assert meta["counts"] == {"train": MAX_TRAIN, "validation": 297}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left

    forbid(monkeypatch)
    second = build_token_splits(tokenizer, data, tmp_path, progress=False)
    assert second.reused and second.cache_path == first.cache_path
    assert digest(second) == digest(first) and second.train.codes.dtype == torch.uint16


def test_changed_weights_or_data_rebuild(tokenizer, data, tmp_path):
    base = build_token_splits(tokenizer, data, tmp_path, progress=False)
    changed = make_tokenizer()
    with torch.no_grad():
        next(changed.encoder.parameters()).view(-1)[0] += 0.5
    assert tokenizer_fingerprint(changed) != tokenizer_fingerprint(tokenizer)
    assert tokenizer_fingerprint(make_tokenizer()) == tokenizer_fingerprint(tokenizer)
    other = build_token_splits(changed, data, tmp_path, progress=False)
    assert not other.reused and other.cache_path != base.cache_path

    fewer = build_token_splits(tokenizer, DataConfig(dataset=data.dataset, max_train_samples=200), tmp_path,
                               progress=False)
    assert not fewer.reused and fewer.cache_path != base.cache_path and len(fewer.train) == 200
    holdout = build_token_splits(tokenizer, DataConfig(dataset=data.dataset, max_train_samples=MAX_TRAIN,
                                                       val_split="holdout"), tmp_path, progress=False)
    assert not holdout.reused and holdout.cache_path not in (base.cache_path, fewer.cache_path)
    again = build_token_splits(tokenizer, DataConfig(dataset=data.dataset, max_train_samples=MAX_TRAIN),
                               tmp_path, progress=False)
    assert again.reused and again.cache_path == base.cache_path


def test_incomplete_cache_is_rebuilt(tokenizer, data, tmp_path):
    first = build_token_splits(tokenizer, data, tmp_path, progress=False)
    (first.cache_path / "meta.json").unlink()
    shutil.rmtree(first.cache_path / "train")
    second = build_token_splits(tokenizer, data, tmp_path, progress=False)
    assert not second.reused and second.cache_path == first.cache_path
    assert digest(second) == digest(first)
    assert build_token_splits(tokenizer, data, tmp_path, progress=False).reused


def test_mismatched_data_raises(tokenizer, data, tmp_path):
    with pytest.raises(ValueError, match=r"data.channels=3.*in_channels=1"):
        build_token_splits(tokenizer, DataConfig(dataset=data.dataset, channels=3), tmp_path)
    with pytest.raises(ValueError, match=r"16x16.*data.image_size=16.*8x8"):
        build_token_splits(tokenizer, DataConfig(dataset=data.dataset, image_size=16), tmp_path)
    assert not list(tmp_path.iterdir())


def test_token_dataset_is_compact():
    codes = torch.randint(0, 1000, (6, 3, 2))
    ds = TokenDataset(codes, torch.arange(6), codebook_size=1000)
    assert ds.codes.dtype == torch.uint16 and len(ds) == 6 and ds.grid == (3, 2)
    assert torch.equal(ds[2][0], codes[2]) and ds[2][1] == 2
    batch, labels = ds.get_batch([4, 1])
    assert torch.equal(batch, codes[[4, 1]]) and batch.dtype == torch.long and labels.tolist() == [4, 1]
    assert TokenDataset(codes, codebook_size=70000).codes.dtype == torch.int32
    assert TokenDataset(codes).labels.tolist() == [-1] * 6


def test_mislaunch_is_an_error(tokenizer, data, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # launched as 2 processes, but this one sees no process group
    with pytest.raises(RuntimeError, match="ACCELERATE_USE_CPU=1"):
        build_token_splits(tokenizer, data, tmp_path, progress=False)


SCRIPT = """
import hashlib, sys
import torch
torch.set_num_threads(1)
from accelerate import PartialState
from stage1_tokenizer import ImageTokenizer
from stage2_prior.tokens import build_token_splits
from trainkit.data import DataConfig

tokenizer = ImageTokenizer.from_pretrained(sys.argv[1])
splits = build_token_splits(tokenizer, DataConfig(dataset=sys.argv[2], max_train_samples={max_train}), sys.argv[3],
                            batch_size=64, progress=False)
h = hashlib.sha256()
for ds in (splits.train, splits.val):
    h.update(ds.codes.long().numpy().tobytes())
    h.update(ds.labels.numpy().tobytes())
state = PartialState()
report = f"rank={{state.process_index}}/{{state.num_processes}} reused={{splits.reused}} digest={{h.hexdigest()}}"
with open(sys.argv[4] + f".rank{{state.process_index}}", "w") as f:   # one file each: printed lines can interleave
    f.write(report + "\\n")
"""


def test_two_processes_match_single_process(tokenizer, data, tmp_path):
    single = build_token_splits(tokenizer, data, tmp_path / "single", progress=False)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    script = tmp_path / "encode.py"
    script.write_text(textwrap.dedent(SCRIPT.format(max_train=MAX_TRAIN)))
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--main_process_port", str(free_port()), "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no"]
    report = tmp_path / "report"
    result = run_module([str(script), str(tmp_path / "tokenizer"), data.dataset, str(tmp_path / "multi"), str(report)],
                        env={"ACCELERATE_USE_CPU": "1"}, launcher=launcher, timeout=300)
    lines = sorted(p.read_text().strip() for p in tmp_path.glob("report.rank*"))
    assert [line.split()[0] for line in lines] == ["rank=0/2", "rank=1/2"], result.stdout + result.stderr
    assert {line.split()[1] for line in lines} == {"reused=False"}
    assert {line.split()[2] for line in lines} == {f"digest={digest(single)}"}
    built = [p.name for p in (tmp_path / "multi").iterdir()]
    assert built == [single.cache_path.name]
