"""`dln enhance`: both backends give the same PNGs; every input kind is read right."""

import numpy as np
import pytest
from PIL import Image

from dln.cli import main
from core.images import load_image, quantize
from parity.engine.tolerance import assert_pngs_match


@pytest.fixture
def lowlight_folder(tmp_path):
    rng = np.random.default_rng(5)
    folder = tmp_path / "in"
    folder.mkdir()
    for name, (h, w) in {"a": (37, 53), "b": (64, 41)}.items():
        Image.fromarray((rng.random((h, w, 3)) * 90).astype(np.uint8)).save(folder / f"{name}.png")
    return folder


def test_jax_and_torch_pngs_are_equal_up_to_rare_off_by_one(tmp_path, authors_pth_64,
                                                            lowlight_folder):
    for backend in ("jax", "torch"):
        code = main(["enhance", "--weights", str(authors_pth_64), "--backend", backend,
                     "--output", str(tmp_path / backend), str(lowlight_folder)])
        assert code == 0
    for name in ("a", "b"):
        a = np.asarray(Image.open(tmp_path / "jax" / f"{name}.png"))
        b = np.asarray(Image.open(tmp_path / "torch" / f"{name}.png"))
        assert a.dtype == np.uint8 and a.shape[2] == 3
        assert_pngs_match(a, b, what=name)


def test_unreadable_file_gets_one_line_others_are_written_exit_nonzero(
        tmp_path, authors_pth_16, lowlight_folder, capsys):
    (lowlight_folder / "broken.png").write_bytes(b"not a png at all")
    code = main(["enhance", "--weights", str(authors_pth_16), "--output", str(tmp_path / "o"),
                 str(lowlight_folder)])
    assert code == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a.png", "b.png"]


def test_image_modes_become_rgb_float_in_unit_range(tmp_path):
    rng = np.random.default_rng(0)
    gray = (rng.random((5, 7)) * 255).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    np.testing.assert_array_equal(load_image(tmp_path / "g.png"),
                                  np.repeat(gray[:, :, None], 3, 2) / np.float32(255))
    rgba = (rng.random((5, 7, 4)) * 255).astype(np.uint8)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), rgba[:, :, :3] / np.float32(255))
    pal = Image.fromarray(gray).convert("P")
    pal.save(tmp_path / "p.png")
    expected = np.asarray(pal.convert("RGB")) / np.float32(255)
    np.testing.assert_array_equal(load_image(tmp_path / "p.png"), expected)
    g16 = (rng.random((5, 7)) * 65535).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    np.testing.assert_allclose(load_image(tmp_path / "g16.png")[:, :, 1], g16 / 65535.0, atol=1e-7)


def test_quantize_truncates_like_the_authors():
    x = np.array([-0.2, 0.0, 0.5, 0.99999, 1.0, 1.7], np.float32)
    # 0.5 * 255 = 127.5 -> 127 (truncation, not rounding)
    np.testing.assert_array_equal(quantize(x), [0, 0, 127, 254, 255, 255])
    levels = np.arange(256, dtype=np.float32) / np.float32(255)
    np.testing.assert_array_equal(quantize(levels), np.arange(256))
