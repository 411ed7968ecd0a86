import shutil

import cv2
import fsspec
import numpy as np
import pytest
from PIL import Image

from conftest import png_header, write_scene
from realfill.data.layout import scene_id_of, storage_name
from realfill.data.scene import SceneError, list_scenes, load_scene, read_image


def test_every_shared_scene_loads(scenes_root):
    uris = list_scenes(str(scenes_root))
    assert len(uris) >= 10
    for uri in uris:
        scene = load_scene(uri)
        assert scene.target.dtype == np.uint8 and scene.target.shape[2] == 3
        assert scene.mask.shape == scene.target.shape[:2] and scene.mask.any() and not scene.mask.all()
        assert scene.refs and all(ref.ndim == 3 and ref.shape[2] == 3 for ref in scene.refs)
        assert (scene.target[scene.mask] == 0).all(), "hole pixels must never be used"


def test_rgba_scene_with_white_hole(scenes_root):
    scene = load_scene(str(scenes_root / "realfill_flowerwoman"))
    raw_mask = np.asarray(Image.open(scenes_root / "realfill_flowerwoman" / "target" / "mask.png"))
    assert raw_mask.shape[2] == 4
    np.testing.assert_array_equal(scene.mask, raw_mask[..., 0] > 127)
    raw_target = np.asarray(Image.open(scenes_root / "realfill_flowerwoman" / "target" / "target.png"))
    np.testing.assert_array_equal(scene.target[~scene.mask], raw_target[..., :3][~scene.mask])
    assert len(scene.refs) == 3 and scene.gt is None


def _break(scene, how):
    target_dir = scene / "target"
    if how == "missing target":
        (target_dir / "target.png").unlink()
        return "target.png", "not found"
    if how == "missing mask":
        (target_dir / "mask.png").unlink()
        return "mask.png", "not found"
    if how == "no refs":
        shutil.rmtree(scene / "ref")
        (scene / "ref").mkdir()
        (scene / "ref" / "notes.txt").write_text("not an image")
        return "ref", "no reference images"
    if how == "mask size":
        Image.new("L", (10, 10), 255).save(target_dir / "mask.png")
        return "mask.png", "10x10"
    if how == "empty mask":
        Image.new("L", (96, 64), 0).save(target_dir / "mask.png")
        return "mask.png", "empty"
    if how == "unreadable target":
        (target_dir / "target.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        return "target.png", "unreadable"
    if how == "unreadable ref":
        (scene / "ref" / "01.jpg").write_bytes(b"not a jpeg at all")
        return "01.jpg", "not an image"
    if how == "zero-byte ref":
        (scene / "ref" / "01.jpg").write_bytes(b"")
        return "01.jpg", "empty file (0 bytes)"
    if how == "truncated target":
        data = (target_dir / "target.png").read_bytes()
        (target_dir / "target.png").write_bytes(data[: len(data) // 2])
        return "target.png", "unreadable image"
    if how == "mask is a folder":
        (target_dir / "mask.png").unlink()
        (target_dir / "mask.png").mkdir()
        return "mask.png", "is a folder, not an image file"
    if how == "decompression bomb":
        (scene / "ref" / "01.jpg").write_bytes(png_header(30000, 30000))
        return "01.jpg", "too large to decode safely"
    raise AssertionError(how)


BAD = ["missing target", "missing mask", "no refs", "mask size", "empty mask", "unreadable target", "unreadable ref",
       "zero-byte ref", "truncated target", "mask is a folder", "decompression bomb"]


@pytest.mark.parametrize("how", BAD)
def test_bad_scene_fails_with_one_line_naming_the_file(tmp_path, how):
    scene = write_scene(tmp_path / "bad")
    filename, words = _break(scene, how)
    with pytest.raises(SceneError) as caught:
        load_scene(str(scene))
    message = str(caught.value)
    assert "\n" not in message and filename in message and words in message


def test_images_above_the_pixel_limit_are_refused_before_decoding(tmp_path):
    scene = write_scene(tmp_path / "big")
    with pytest.raises(SceneError) as caught:
        load_scene(str(scene), max_megapixels=0.005)
    assert str(caught.value).endswith(
        "target.png: 96x64 is 0.00614 megapixels, above the limit of 0.005 (--max_megapixels)")
    (scene / "ref" / "00.jpg").write_bytes(png_header(12000, 10000))  # 120 MP: would need 360 MB to decode
    with pytest.raises(SceneError, match="00.jpg: 12000x10000 is 120 megapixels, above the limit of 64"):
        load_scene(str(scene), max_megapixels=64)


def test_scene_ids_are_folder_names_and_storage_names_are_safe(tmp_path):
    assert scene_id_of("/data/x\\dup") == "x\\dup" and scene_id_of("s3://b/root/dup/") == "dup"
    assert storage_name("garden_01") == "garden_01"
    names = [storage_name(scene_id) for scene_id in ("dup", "x\\dup", ".hidden", "_under", "a" * 200, "été", "")]
    assert len(set(names)) == len(names), "distinct ids, distinct names"
    for name in names:
        assert name[0] not in "._" and len(name) <= 80 and name.isascii() and "/" not in name and "\\" not in name


def test_colliding_scene_ids_are_an_error_naming_both_folders(tmp_path):
    write_scene(tmp_path / "root" / "Garden")
    write_scene(tmp_path / "root" / "garden")
    with pytest.raises(SceneError) as caught:
        list_scenes(str(tmp_path / "root"))
    assert "Garden" in str(caught.value) and "garden" in str(caught.value) and "collides" in str(caught.value)
    (tmp_path / "root" / "Garden").rename(tmp_path / "root" / "x\\dup")
    (tmp_path / "root" / "garden").rename(tmp_path / "root" / "dup")
    assert [scene_id_of(uri) for uri in list_scenes(str(tmp_path / "root"))] == ["dup", "x\\dup"]


def test_exif_orientation_is_applied(tmp_path):
    image = Image.fromarray(np.zeros((30, 60, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert read_image(str(tmp_path / "rotated.jpg")).shape == (60, 30, 3)


def with_orientation(path, orientation: int | None) -> None:
    """Rewrite an image file with an EXIF orientation (None: none), its pixels as they are."""
    image = Image.open(path)
    image.load()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(path, exif=exif)


@pytest.mark.parametrize("size", [(96, 64), (64, 64)])
def test_a_mask_whose_orientation_differs_from_its_targets_is_named_as_such(tmp_path, size):
    """A phone photo's target (EXIF rotation) with a mask saved without it, both the same size as stored:
    which way the mask is meant cannot be told (a square one would be silently misaligned)."""
    scene = write_scene(tmp_path / "scene", size=size)
    with_orientation(scene / "target" / "target.png", 6)
    with pytest.raises(SceneError) as caught:
        load_scene(str(scene))
    width, height = size
    assert str(caught.value) == (
        f"{scene / 'target' / 'mask.png'}: its EXIF orientation is upright, the target's "
        f"({scene / 'target' / 'target.png'}) is rotated 90 clockwise, and both files are {width}x{height} as "
        f"stored, so which way the mask is meant cannot be told; save both with the same orientation (or both "
        f"upright)")


def test_target_mask_and_truth_with_one_orientation_are_turned_together(tmp_path):
    scene = write_scene(tmp_path / "scene")
    plain = load_scene(str(scene))
    for name in ("target.png", "mask.png", "gt.png"):
        with_orientation(scene / "target" / name, 6)
    turned = load_scene(str(scene))
    assert turned.target.shape == (96, 64, 3) and np.array_equal(turned.mask, np.rot90(plain.mask, -1))
    assert np.array_equal(turned.gt, np.rot90(plain.gt, -1)) and np.array_equal(turned.target,
                                                                                np.rot90(plain.target, -1))
    with_orientation(scene / "target" / "mask.png", None)  # a mask drawn on the target as shown: 64x96
    Image.fromarray(np.rot90(np.asarray(Image.open(scene / "target" / "mask.png")), -1).copy()).save(
        scene / "target" / "mask.png")
    assert np.array_equal(load_scene(str(scene)).mask, turned.mask)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "grey16.png"), values)
    cv2.imwrite(str(tmp_path / "rgb16.png"), np.stack([values] * 3, axis=-1))
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    assert read_image(str(tmp_path / "grey16.png"), mode="L").tolist() == [[0, 128, 255]]
    assert read_image(str(tmp_path / "rgb16.png"))[..., 0].tolist() == [[0, 128, 255]]


def test_scene_loads_from_an_fsspec_uri(tmp_path):
    local = write_scene(tmp_path / "local", refs=1)
    memory = fsspec.filesystem("memory")
    for file in local.rglob("*"):
        if file.is_file():
            memory.pipe(f"/scenes/remote/{file.relative_to(local).as_posix()}", file.read_bytes())
    scene = load_scene("memory://scenes/remote")
    assert scene.scene_id == "remote" and len(scene.refs) == 1
    np.testing.assert_array_equal(scene.target, load_scene(str(local)).target)
    assert list_scenes("memory://scenes") == ["memory://scenes/remote"]


def test_scenes_root_errors(tmp_path):
    scene = write_scene(tmp_path / "root" / "one")
    assert list_scenes(str(tmp_path / "root")) == [str(scene)]
    with pytest.raises(SceneError, match="this is one scene"):
        list_scenes(str(scene))
    with pytest.raises(SceneError, match="scenes root not found"):
        list_scenes(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SceneError, match="no scene folders"):
        list_scenes(str(tmp_path / "empty"))


def test_unusual_but_valid_image_modes_load(tmp_path):
    scene = write_scene(tmp_path / "modes")
    rgb = np.asarray(Image.open(scene / "ref" / "00.jpg"))
    Image.fromarray(rgb).convert("CMYK").save(scene / "ref" / "00.jpg")
    Image.fromarray(rgb).convert("P").save(scene / "ref" / "02.png", transparency=0)
    mask = np.asarray(Image.open(scene / "target" / "mask.png"))
    Image.fromarray(np.stack([mask, np.full_like(mask, 255)], -1), "LA").save(scene / "target" / "mask.png")
    loaded = load_scene(str(scene))
    assert [ref.shape[2] for ref in loaded.refs] == [3, 3, 3] and loaded.mask.any()
