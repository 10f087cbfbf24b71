"""Task sequences and data sources: Split-Digits, class orders, validation errors, local folder layouts."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from decoding.errors import UserError
from prompt_pool.data_config import ImageConfig, LoaderConfig, SourceConfig, SplitConfig
from prompt_pool.datamodule import TaskSequenceDataModule
from prompt_pool.datasets import ImageSet, load_cifar100, load_digits_splits
from prompt_pool.sources import DataSource, get_source, register_source, source_names
from prompt_pool.task_split import split_classes


def test_split_digits_is_real_bundled_data_disjoint_from_the_pretraining_pool():
    pre, train, test = load_digits_splits(0.3)
    assert len(pre) + len(train) + len(test) == 1797
    assert train.x.shape[1:] == (1, 8, 8) and 0 <= float(train.x.min()) and float(train.x.max()) <= 1
    dm = TaskSequenceDataModule("digits")
    assert [t.classes for t in dm.tasks] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert sum(len(t.train) for t in dm.tasks) == len(train) and sum(len(t.test) for t in dm.tasks) == len(
        test
    )
    flat = lambda s: {tuple(r) for r in s.x.flatten(1).mul(16).round().int().tolist()}  # noqa: E731
    # no pretraining image reappears in a task (compare pixel tuples; duplicates inside digits are rare)
    assert len(flat(pre) & flat(train)) <= 2 and len(flat(pre) & flat(test)) <= 2
    uids = torch.cat([torch.tensor([dm.train_dataset(t)[i][2] for i in range(3)]) for t in range(5)])
    assert len(set(uids.tolist())) == 15


def test_class_order_natural_and_seeded_shuffle():
    assert split_classes(list(range(6)), 3) == [[0, 1], [2, 3], [4, 5]]
    a, b = split_classes(list(range(10)), 5, "shuffle", 1), split_classes(list(range(10)), 5, "shuffle", 1)
    assert a == b and a != split_classes(list(range(10)), 5) and sorted(sum(a, [])) == list(range(10))
    assert a != split_classes(list(range(10)), 5, "shuffle", 2)


def test_bad_task_definitions_are_rejected():
    with pytest.raises(ValueError, match=r"names classes \[12\] that the data set lacks"):
        TaskSequenceDataModule("digits", split=SplitConfig(task_classes=[[0, 1], [12, 3]]))
    with pytest.raises(ValueError, match="overlap on class 1"):
        TaskSequenceDataModule("digits", split=SplitConfig(task_classes=[[0, 1], [1, 2]]))
    with pytest.raises(ValueError, match="num_tasks 3 does not split the"):
        TaskSequenceDataModule("digits", split=SplitConfig(num_tasks=3))
    with pytest.raises(ValueError, match="pass --data.source.root"):
        TaskSequenceDataModule("cifar100")


def test_task_sequence_with_explicit_classes_keeps_only_those_samples():
    dm = TaskSequenceDataModule("digits", split=SplitConfig(task_classes=[[3, 7], [0]]))
    assert dm.num_tasks == 2 and set(dm.tasks[0].train.y.tolist()) == {3, 7}
    assert set(dm.tasks[1].test.y.tolist()) == {0}


def test_cifar100_from_torchvision_layout(tmp_path):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 200), ("test", 100)):
        d = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "fine_labels": list(range(100)) * (n // 100),
        }
        with open(base / split, "wb") as f:
            pickle.dump(d, f)
    dm = TaskSequenceDataModule(
        "cifar100", source=SourceConfig(root=str(tmp_path)), split=SplitConfig(num_tasks=10)
    )
    assert dm.num_tasks == 10 and dm.num_classes == 100 and dm.tasks[3].classes == list(range(30, 40))
    assert dm.tasks[0].train.x.shape == (20, 3, 32, 32)
    with pytest.raises(UserError, match="is not a folder"):
        TaskSequenceDataModule("cifar100", source=SourceConfig(root=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"cifar-100-python/\{train,test\}"):
        TaskSequenceDataModule("cifar100", source=SourceConfig(root=str(tmp_path / "empty")))


def _write_images(folder, n, size=6, mode="RGB"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = np.full((size, size, 3) if mode == "RGB" else (size, size), 40 * i % 255, dtype=np.uint8)
        Image.fromarray(arr, mode=mode).save(folder / f"{i}.png")


def test_five_datasets_from_image_folders_offsets_labels(tmp_path):
    order = ["a", "b", "c", "d", "e"]
    for name in order:
        for split in ("train", "test"):
            for cls in ("0", "1"):
                _write_images(tmp_path / name / split / cls, 2)
    dm = TaskSequenceDataModule(
        "five_datasets", source=SourceConfig(root=str(tmp_path), five_datasets_order=order)
    )
    assert [t.classes for t in dm.tasks] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert dm.tasks[2].train.x.shape == (4, 3, 6, 6) and set(dm.tasks[4].test.y.tolist()) == {8, 9}


def test_wrong_folder_layout_says_what_was_expected(tmp_path):
    _write_images(tmp_path / "a" / "images", 2)  # no train/test split
    with pytest.raises(UserError, match=r"<root>/\{train,test\}/<class_name>/<image>.png"):
        TaskSequenceDataModule(
            "five_datasets", source=SourceConfig(root=str(tmp_path), five_datasets_order=["a"])
        )
    _write_images(tmp_path / "core" / "s1" / "objects", 1)
    with pytest.raises(UserError, match=r"o1\.\.o50|s<session"):
        TaskSequenceDataModule(
            "core50", source=SourceConfig(root=str(tmp_path / "core")), split=SplitConfig(setting="domain")
        )


def test_core50_keeps_its_128_px_detail_until_the_per_sample_resize(tmp_path):
    """1-px stripes survive: stored at 128 px, resized once to 224 when read (a 32 px store blurred them)."""
    stripes = np.zeros((128, 128, 3), dtype=np.uint8)
    stripes[:, ::2] = 255
    for s in range(1, 12):
        (tmp_path / f"s{s}" / "o1").mkdir(parents=True)
        Image.fromarray(stripes, mode="RGB").save(tmp_path / f"s{s}" / "o1" / "0.png")
    dm = TaskSequenceDataModule(
        "core50",
        source=SourceConfig(root=str(tmp_path)),
        split=SplitConfig(setting="domain"),
        images=ImageConfig(image_size=224),
    )
    assert dm.tasks[0].train.x.shape == (1, 3, 128, 128)
    x, _, _ = dm.train_dataset(0)[0]
    assert x.shape == (3, 224, 224) and x.std() > 0.2  # 0.29 here; stored at 32 px: ~0


def test_core50_sessions_are_domain_tasks_with_a_shared_test_set(tmp_path):
    for s in range(1, 12):
        for o in (1, 2):
            _write_images(tmp_path / f"s{s}" / f"o{o}", 1)
    dm = TaskSequenceDataModule(
        "core50", source=SourceConfig(root=str(tmp_path)), split=SplitConfig(setting="domain")
    )
    assert dm.num_tasks == 8 and all(t.classes == [0, 1] for t in dm.tasks)
    assert len(dm.tasks[0].test) == 6 and torch.equal(dm.tasks[0].test.x, dm.tasks[7].test.x)
    with pytest.raises(ValueError, match="domain"):
        TaskSequenceDataModule("core50", source=SourceConfig(root=str(tmp_path)))


def test_images_are_resized_per_sample_not_in_memory_and_replay_stores_resized_images():
    from prompt_pool.replay import ReplayBuffer

    dm = TaskSequenceDataModule("digits", images=ImageConfig(image_size=16, channels=3))
    assert dm.tasks[0].train.x.shape[1:] == (3, 8, 8)  # stored at native size (a channel view)
    x, y, uid = dm.train_dataset(0)[0]
    ref = torch.nn.functional.interpolate(dm.tasks[0].train.x[:1], size=(16, 16), mode="bilinear")[0]
    assert x.shape == (3, 16, 16) and torch.allclose(x, ref)
    batch = next(iter(dm.test_loaders()[0]))[0]
    assert batch.shape[1:] == (3, 16, 16)
    buf = ReplayBuffer(per_class=2)
    buf.add(dm.train_dataset(0), [0, 1], 0)
    assert buf.x.shape == (4, 3, 16, 16)


class _RunsCode:
    """A pickle payload that calls ``os.system`` when loaded by a plain ``pickle.load``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _fake_cifar(root, protocol: int, payload: object = None) -> None:
    base = root / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        d = {"data": rng.integers(0, 256, (100, 3072), dtype=np.uint8), "fine_labels": list(range(100))}
        if payload is not None:
            d["coarse_labels"] = payload
        (base / split).write_bytes(pickle.dumps(d, protocol=protocol))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_genuine_cifar100_pickles_load_under_the_restricted_unpickler(tmp_path, protocol):
    _fake_cifar(tmp_path, protocol)
    train, test = load_cifar100(tmp_path)
    assert train.x.shape == (100, 3, 32, 32) and train.y.tolist() == list(range(100))
    raw = pickle.loads((tmp_path / "cifar-100-python" / "test").read_bytes())
    assert torch.equal(test.x, torch.as_tensor(raw["data"].reshape(-1, 3, 32, 32)).float() / 255.0)


@pytest.mark.parametrize("protocol", [2, 5])
def test_a_crafted_cifar100_pickle_is_refused_and_runs_nothing(tmp_path, protocol):
    marker = tmp_path / "code_ran"
    _fake_cifar(tmp_path, protocol, payload=_RunsCode(str(marker)))
    with pytest.raises(UserError, match=r"refused to read .*names posix\.system") as err:
        load_cifar100(tmp_path)
    assert "\n" not in str(err.value) and not marker.exists()
    pickle.loads((tmp_path / "cifar-100-python" / "train").read_bytes())  # the plain loader would run it
    assert marker.exists()


def test_a_pickle_of_another_class_is_refused(tmp_path):
    _fake_cifar(tmp_path, 4, payload=ImageSet(torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long)))
    with pytest.raises(UserError, match="names prompt_pool.datasets.ImageSet"):
        load_cifar100(tmp_path)


class _Stripes(DataSource):
    """A new data source in one class: vertical (class 0) or horizontal (class 1) stripes."""

    def load(self, o: SourceConfig) -> tuple[ImageSet, ImageSet]:
        x = torch.zeros(8, 1, 8, 8)
        x[:4, :, :, ::2] = 1.0
        x[4:, :, ::2, :] = 1.0
        y = torch.tensor([0] * 4 + [1] * 4)
        return ImageSet(x, y), ImageSet(x.clone(), y.clone())


STRIPES = _Stripes()


def test_a_new_data_source_is_one_class_and_one_register_call():
    register_source("stripes", STRIPES)
    assert "stripes" in source_names() and get_source("stripes") is STRIPES
    dm = TaskSequenceDataModule("stripes", split=SplitConfig(num_tasks=2), loader=LoaderConfig(batch_size=4))
    assert [t.classes for t in dm.tasks] == [[0], [1]] and dm.num_classes == 2
    with pytest.raises(ValueError, match="already registered"):
        register_source("stripes", _Stripes())
    with pytest.raises(UserError, match=r"unknown data.dataset 'nope'; use one of digits, .*stripes"):
        TaskSequenceDataModule("nope")
