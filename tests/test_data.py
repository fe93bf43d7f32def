"""common.data: mode conversion, crops/flips determinism, hash split, dataset selection, bad inputs."""
import argparse
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import common.data as data
from common.data import datasets
from common.data.images import load_rgb
from common.errors import UserError
from common.flags import add_data_arguments
from common.train.config import DataConfig
from tests.helpers import smooth_image


# ---------------------------------------------------------------------------------- helpers
def write_rgb(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def random_rgb(height, width, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (height, width, 3)).astype(np.uint8)


def make_folder(root: Path, count: int, size=(24, 20), prefix="img") -> list[Path]:
    return [write_rgb(root / f"{prefix}{i:03d}.png", random_rgb(*size, seed=i)) for i in range(count)]


def write_png_rgb16(path: Path, array: np.ndarray) -> None:
    """A 48-bit RGB PNG written by hand (PIL cannot write one)."""
    height, width, _ = array.shape
    raw = b"".join(b"\x00" + array[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def data_args(**overrides) -> DataConfig:
    return DataConfig(**overrides)


# ---------------------------------------------------------------------------------- modes
def _palette_image(transparent: bool) -> Image.Image:
    image = Image.new("P", (4, 3), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((0, 0), 0)
    if transparent:
        image.info["transparency"] = 0
    return image


MODE_CASES = {
    # name: (file name, image factory, expected RGB of pixel (0, 0), expected RGB of pixel (1, 0), tolerance)
    "L": ("l.png", lambda: Image.new("L", (4, 3), 100), (100,) * 3, (100,) * 3, 0),
    "1": ("bilevel.png", lambda: Image.new("1", (4, 3), 1), (255,) * 3, (255,) * 3, 0),
    "P": ("p.png", lambda: _palette_image(False), (0, 0, 0), (255, 0, 0), 0),
    "P+transparency": ("pt.png", lambda: _palette_image(True), (255, 255, 255), (255, 0, 0), 0),
    "RGBA": ("rgba.png", lambda: Image.new("RGBA", (4, 3), (10, 20, 30, 0)), (255,) * 3, (255,) * 3, 0),
    "RGBA opaque webp": ("rgba.webp", lambda: Image.new("RGBA", (4, 3), (10, 20, 30, 255)),
                         (10, 20, 30), (10, 20, 30), 2),  # lossy by default
    "LA half": ("la.png", lambda: Image.new("LA", (4, 3), (100, 128)), (178,) * 3, (178,) * 3, 1),
    "CMYK tif": ("cmyk.tif", lambda: Image.new("CMYK", (4, 3), (255, 0, 0, 0)), (0, 255, 255), (0, 255, 255), 0),
    "CMYK jpg": ("cmyk.jpg", lambda: Image.new("CMYK", (4, 3), (0, 0, 0, 0)), (255,) * 3, (255,) * 3, 2),
    "I;16 png": ("g16.png", lambda: Image.fromarray(np.full((3, 4), 25700, np.uint16)), (100,) * 3, (100,) * 3, 0),
    "I;16 dark": ("g16dark.png", lambda: Image.fromarray(np.full((3, 4), 200, np.uint16)), (1,) * 3, (1,) * 3, 0),
    "I;16 tif": ("g16.tif", lambda: Image.new("I;16", (4, 3), 65535), (255,) * 3, (255,) * 3, 0),
    "F tif": ("f.tif", lambda: Image.new("F", (4, 3), 0.5), (128,) * 3, (128,) * 3, 0),
    "RGB bmp": ("rgb.bmp", lambda: Image.new("RGB", (4, 3), (1, 2, 3)), (1, 2, 3), (1, 2, 3), 0),
    "RGB jpeg": ("rgb.jpeg", lambda: Image.new("RGB", (4, 3), (200, 100, 50)), (200, 100, 50), (200, 100, 50), 3),
}


@pytest.mark.parametrize("case", sorted(MODE_CASES))
def test_every_mode_becomes_8bit_rgb(tmp_path, case):
    name, factory, first, second, tolerance = MODE_CASES[case]
    factory().save(tmp_path / name)
    image = load_rgb(tmp_path / name)
    assert image.mode == "RGB" and image.size == (4, 3)
    pixels = np.asarray(image).astype(int)
    assert np.abs(pixels[0, 0] - first).max() <= tolerance
    assert np.abs(pixels[0, 1] - second).max() <= tolerance


def test_48bit_rgb_png(tmp_path):
    values = np.random.RandomState(0).randint(0, 65536, (3, 4, 3)).astype(np.uint16)
    write_png_rgb16(tmp_path / "rgb48.png", values)
    pixels = np.asarray(load_rgb(tmp_path / "rgb48.png")).astype(float)
    assert pixels.shape == (3, 4, 3)
    assert np.abs(pixels - values / 257.0).max() <= 1.0


# ---------------------------------------------------------------------------------- crops and flips
def all_views(array: np.ndarray):
    return [array, array[:, ::-1], array[::-1], array[::-1, ::-1]]


def is_crop_of(patch: np.ndarray, source: np.ndarray) -> bool:
    size = patch.shape[0]
    for view in all_views(source):
        for top in range(view.shape[0] - size + 1):
            for left in range(view.shape[1] - size + 1):
                if np.array_equal(view[top:top + size, left:left + size], patch):
                    return True
    return False


def as_uint8(item: torch.Tensor) -> np.ndarray:
    return (item.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def test_train_items_are_flipped_crops_and_depend_only_on_seed_epoch_index(tmp_path):
    files = make_folder(tmp_path, 6, size=(20, 24))
    first = datasets.ImageFileDataset(files, 8, train=True, seed=5)
    second = datasets.ImageFileDataset(files, 8, train=True, seed=5)
    torch.manual_seed(123)
    items = [first[i] for i in range(6)]
    torch.manual_seed(999)  # global RNG state must not matter
    rng_before = torch.get_rng_state()
    assert all(torch.equal(a, second[i]) for i, a in enumerate(items))
    assert torch.equal(torch.get_rng_state(), rng_before)
    for i, item in enumerate(items):
        assert item.shape == (3, 8, 8) and item.dtype == torch.float32
        assert is_crop_of(as_uint8(item), np.asarray(Image.open(files[i])))
    first.set_epoch(1)
    assert any(not torch.equal(first[i], items[i]) for i in range(6))
    other_seed = datasets.ImageFileDataset(files, 8, train=True, seed=6)
    assert any(not torch.equal(other_seed[i], items[i]) for i in range(6))


def test_flips_happen_about_half_the_time(tmp_path):
    # A 1-row-symmetric check: with a full-size patch only the flips vary.
    source = random_rgb(8, 8)
    files = [write_rgb(tmp_path / "a.png", source)]
    dataset = datasets.ImageFileDataset(files, 8, train=True, seed=0)
    seen = {0: 0, 1: 0, 2: 0, 3: 0}
    for epoch in range(200):
        dataset.set_epoch(epoch)
        patch = as_uint8(dataset[0])
        seen[next(k for k, view in enumerate(all_views(source)) if np.array_equal(view, patch))] += 1
    assert all(30 <= count <= 70 for count in seen.values()), seen


def test_dataloader_workers_and_persistent_workers_see_the_same_items(tmp_path):
    files = make_folder(tmp_path, 4, size=(16, 16))
    dataset = datasets.ImageFileDataset(files, 8, train=True, seed=1)
    expected = {}
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        expected[epoch] = torch.stack([dataset[i] for i in range(4)])
    dataset.set_epoch(0)
    loader = DataLoader(dataset, batch_size=4, num_workers=1, persistent_workers=True)
    assert torch.equal(next(iter(loader)), expected[0])
    dataset.set_epoch(1)
    assert torch.equal(next(iter(loader)), expected[1])


def test_validation_items_are_centre_crops_or_whole_images(tmp_path):
    source = random_rgb(21, 30)
    files = [write_rgb(tmp_path / "a.png", source)]
    centre = datasets.ImageFileDataset(files, 10, train=False)
    assert np.array_equal(as_uint8(centre[0]), source[5:15, 10:20])
    whole = datasets.ImageFileDataset(files, None, train=False)
    assert np.array_equal(as_uint8(whole[0]), source)


def test_small_images_are_reflect_padded(tmp_path):
    source = random_rgb(40, 40)
    files = [write_rgb(tmp_path / "small.png", source)]
    padded = np.pad(source, ((12, 12), (12, 12), (0, 0)), mode="reflect")
    val = datasets.ImageFileDataset(files, 64, train=False)
    assert np.array_equal(as_uint8(val[0]), padded)
    train = datasets.ImageFileDataset(files, 64, train=True)
    assert is_crop_of(as_uint8(train[0]), padded)
    # Far smaller than the patch: the reflection repeats.
    tiny = datasets.ImageFileDataset([write_rgb(tmp_path / "tiny.png", random_rgb(3, 2))], 16, train=True)
    assert tiny[0].shape == (3, 16, 16)


def test_recon_subset_is_the_first_items_in_order(tmp_path):
    files = make_folder(tmp_path, 5)
    dataset = datasets.ImageFileDataset(files, 8, train=False)
    subset = data.recon_subset(dataset, 3)
    assert list(subset.indices) == [0, 1, 2]
    assert torch.equal(subset[2], dataset[2])
    assert len(data.recon_subset(dataset, 50)) == 5
    with pytest.raises(UserError):
        data.recon_subset(dataset, -1)


# ---------------------------------------------------------------------------------- hash split
def test_hash_split_membership_by_hand():
    # sha1("kodim13")[:8 bytes] = 01836ea37e88f48f -> 0.0059; kodim17 0ffd3066... -> 0.0625;
    # kodim21 177cacd8... -> 0.0917; kodim08 18e97ce7... -> 0.0973; kodim01 62719898... -> 0.3845.
    assert datasets.hash_fraction("kodim13") == pytest.approx(0x01836EA37E88F48F / 2**64)
    assert datasets.hash_fraction("kodim01") == pytest.approx(0x62719898FB28D70A / 2**64)
    val_at_10 = {f"kodim{i:02d}" for i in range(1, 25) if datasets.is_validation(f"kodim{i:02d}", 0.10)}
    assert val_at_10 == {"kodim08", "kodim13", "kodim17", "kodim21"}
    assert {f"kodim{i:02d}" for i in range(1, 25) if datasets.is_validation(f"kodim{i:02d}", 0.05)} == {"kodim13"}
    assert not datasets.is_validation("000000000009", 0.5)  # 0.5555
    assert datasets.is_validation("000000000009", 0.56)


def test_split_key_is_relative_posix_path_without_extension(tmp_path):
    assert datasets.split_key(tmp_path / "sub" / "dir" / "photo.JPG", tmp_path) == "sub/dir/photo"
    other = Path("/elsewhere/root")
    assert datasets.split_key(other / "sub" / "dir" / "photo.png", other) == "sub/dir/photo"


def test_hash_split_on_files_and_subset(tmp_path):
    files = [tmp_path / f"kodim{i:02d}.png" for i in range(1, 25)]
    train, val = datasets.hash_split(files, tmp_path, 0.10)
    assert [p.stem for p in val] == ["kodim08", "kodim13", "kodim17", "kodim21"]
    assert len(train) == 20 and train == sorted(train)
    subset = datasets.hash_subset(files, tmp_path, 5)
    assert len(subset) == 5 and subset == sorted(subset)
    assert subset != files[:5]  # a pseudo-random pick, not the first names
    assert subset == datasets.hash_subset(list(reversed(files)), tmp_path, 5)[::-1]
    assert datasets.hash_subset(files, tmp_path, None) == files


def test_hash_split_ratio_is_respected_on_many_names():
    keys = [f"{i:012d}" for i in range(4000)]
    fraction = sum(datasets.is_validation(k, 0.1) for k in keys) / len(keys)
    assert 0.085 < fraction < 0.115


# ---------------------------------------------------------------------------------- unreadable files
def test_corrupt_files_are_skipped_with_names_or_strict_error(tmp_path, capsys):
    make_folder(tmp_path, 3)
    (tmp_path / "broken.jpg").write_bytes(b"not an image at all")
    files = datasets.find_images(tmp_path)
    assert [p.name for p in files] == ["img000.png", "img001.png", "img002.png"]
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "skipped 1 unreadable file(s) of 4" in err
    with pytest.raises(UserError, match="broken.jpg") as info:
        datasets.find_images(tmp_path, strict=True)
    assert "\n" not in str(info.value)


def test_truncated_file_is_replaced_by_the_next_item_or_strict_error(tmp_path, capsys):
    files = make_folder(tmp_path, 3, size=(64, 64))
    Image.fromarray(random_rgb(64, 64)).save(files[1], format="JPEG")
    encoded = files[1].read_bytes()
    files[1].write_bytes(encoded[:len(encoded) // 2])  # header intact, data cut
    dataset = datasets.ImageFileDataset(datasets.find_images(tmp_path), 16, train=False)
    assert len(dataset) == 3
    assert torch.equal(dataset[1], dataset[2])
    assert "img001.png" in capsys.readouterr().err
    strict = datasets.ImageFileDataset(files, 16, train=False, strict=True)
    with pytest.raises(UserError, match="img001.png"):
        strict[1]


def test_missing_and_empty_folders_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="not found") as info:
        datasets.find_images(tmp_path / "nope")
    assert "\n" not in str(info.value)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    with pytest.raises(UserError, match="no images"):
        datasets.find_images(tmp_path / "empty")


# ---------------------------------------------------------------------------------- build_datasets
def test_explicit_folders(tmp_path):
    make_folder(tmp_path / "train", 4, size=(40, 40))
    make_folder(tmp_path / "test", 2, size=(50, 60))
    train, val = data.build_datasets(data_args(train_dataset=str(tmp_path / "train"),
                                               test_dataset=str(tmp_path / "test"), patch_size=32), seed=3)
    assert len(train) == 4 and len(val) == 2 and train.train and not val.train and train.seed == 3
    assert train[0].shape == val[1].shape == (3, 32, 32)


def test_train_folder_alone_is_hash_split(tmp_path):
    root = tmp_path / "photos"
    for i in range(1, 25):
        write_rgb(root / f"kodim{i:02d}.png", random_rgb(8, 8, seed=i))
    train, val = data.build_datasets(data_args(train_dataset=str(root), val_ratio=0.1, patch_size=8))
    assert [p.stem for p in val.files] == ["kodim08", "kodim13", "kodim17", "kodim21"]
    assert len(train) == 20
    train, val = data.build_datasets(data_args(train_dataset=str(root), val_ratio=0.1, max_images=12,
                                               patch_size=8))
    assert len(train) + len(val) == 12
    with pytest.raises(UserError, match="no validation image"):
        data.build_datasets(data_args(train_dataset=str(root), val_ratio=0.001, patch_size=8))


def test_coco_layouts(tmp_path):
    coco = tmp_path / "coco"
    for i in range(1, 25):
        write_rgb(coco / "train2017" / f"kodim{i:02d}.jpg", random_rgb(8, 8, seed=i))
    make_folder(coco / "val2017", 3, size=(8, 8))
    train, val = data.build_datasets(data_args(coco_dir=str(coco), patch_size=8))
    assert (len(train), len(val)) == (24, 3) and val.root == coco / "val2017"
    train, val = data.build_datasets(data_args(coco_dir=str(coco), val_ratio=0.1, patch_size=8))
    assert [p.stem for p in val.files] == ["kodim08", "kodim13", "kodim17", "kodim21"]
    with pytest.raises(UserError, match="drop --use_prepared"):
        data.build_datasets(data_args(coco_dir=str(coco), use_prepared=True))

    prepared = tmp_path / "coco224"
    make_folder(prepared / "train", 3, size=(16, 16))
    make_folder(prepared / "val", 2, size=(16, 16))
    with pytest.raises(UserError, match="--use_prepared true"):
        data.build_datasets(data_args(coco_dir=str(prepared)))
    train, val = data.build_datasets(data_args(coco_dir=str(prepared), use_prepared=True, patch_size=16))
    assert (len(train), len(val)) == (3, 2)


def test_prepared_crops_smaller_than_the_patch_warn(tmp_path, capsys):
    prepared = tmp_path / "coco224"
    make_folder(prepared / "train", 2, size=(16, 16))
    make_folder(prepared / "val", 1, size=(16, 16))
    data.build_datasets(data_args(coco_dir=str(prepared), use_prepared=True, patch_size=32))
    assert "pass --patch_size 16" in capsys.readouterr().err


def test_embedded_samples_are_the_default(tmp_path, monkeypatch, capsys):
    make_folder(tmp_path / "train", 2, size=(16, 16))
    make_folder(tmp_path / "val", 1, size=(16, 16))
    make_folder(tmp_path / "test", 3, size=(16, 16))
    monkeypatch.setattr(data, "sample_splits", lambda: (tmp_path / "train", tmp_path / "val", tmp_path / "test"))
    train, val = data.build_datasets(data_args(patch_size=16))
    # Validation is the val/ split: the test photos are left to the final evaluation.
    assert (len(train), len(val)) == (2, 1) and val.files[0].parent == tmp_path / "val"
    assert "embedded sample photos" in capsys.readouterr().out
    make_folder(tmp_path / "kodak", 2, size=(16, 16))
    train, val = data.build_datasets(data_args(test_dataset=str(tmp_path / "kodak"), patch_size=16))
    assert (len(train), len(val)) == (2, 2)


@pytest.mark.parametrize("overrides,match", [
    ({"train_dataset": "MISSING"}, "--train_dataset folder not found"),
    ({"coco_dir": "MISSING"}, "--coco_dir folder not found"),
    ({"train_dataset": "train", "coco_dir": "train"}, "either --train_dataset or --coco_dir"),
    ({"train_dataset": "train", "test_dataset": "MISSING"}, "--test_dataset folder not found"),
    ({"train_dataset": "train", "test_dataset": "train", "val_ratio": 0.1}, "drop one of them"),
    ({"train_dataset": "train", "val_ratio": 0.0}, "--val_ratio 0 leaves no validation"),
    ({"train_dataset": "train", "val_ratio": 1.5}, r"--val_ratio must be in \[0, 1\)"),
    ({"train_dataset": "train", "max_images": 0}, "--max_images must be >= 1"),
    ({"train_dataset": "empty"}, "no images"),
    ({"coco_dir": "empty"}, "no train2017/ folder"),
])
def test_bad_data_flags_are_one_line_errors(tmp_path, overrides, match):
    make_folder(tmp_path / "train", 3)
    (tmp_path / "empty").mkdir()
    resolved = {k: (str(tmp_path / v) if isinstance(v, str) else v) for k, v in overrides.items()}
    with pytest.raises(UserError, match=match) as info:
        data.build_datasets(data_args(**resolved))
    assert "\n" not in str(info.value)


def test_patch_size_flag_accepts_the_seeds_two_values():
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    assert parser.parse_args([]).patch_size == 256
    assert parser.parse_args(["--patch-size", "256", "256"]).patch_size == 256
    assert parser.parse_args(["--patch_size", "224"]).patch_size == 224
    with pytest.raises(SystemExit):
        parser.parse_args(["--patch_size", "256", "128"])
    args = parser.parse_args(["-tr_d", "a", "-te_d", "b", "--use_prepared", "--num-workers", "0", "--strict", "true"])
    assert (args.train_dataset, args.test_dataset, args.use_prepared, args.num_workers, args.strict) == \
        ("a", "b", True, 0, True)


def test_decoded_images_are_cached_within_the_budget(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    files = []
    for index in range(3):
        files.append(tmp_path / f"{index}.png")
        Image.fromarray(smooth_image(rng, 40)).save(files[-1])
    plain = datasets.ImageFileDataset(files, 16, train=True, seed=5)
    one_image = 40 * 40 * 3
    cached = datasets.ImageFileDataset(files, 16, train=True, seed=5, cache_mb=2.5 * one_image / 2**20)
    decoded = []
    real_load = datasets.load_rgb
    monkeypatch.setattr(datasets, "load_rgb", lambda path: decoded.append(path) or real_load(path))
    for epoch in range(3):
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        for index in range(3):
            assert torch.equal(plain[index], cached[index])
    # plain decodes 9 times; the cache holds two images (2.5 images of room), so the third is decoded every time
    assert len(decoded) == 9 + 2 + 3
    with pytest.raises(UserError, match="cache size must be >= 0"):
        datasets.ImageFileDataset(files, 16, train=True, cache_mb=-1)
