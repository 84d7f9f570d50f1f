"""Huge image files (issue 15, item 12): a 13000x13000 PNG is 0.5 MB on disk and 0.5 GB
decoded. Files above ``data.params.max_pixels`` are refused before decoding, naming the file;
what is decoded stays within a budget, and a JPEG decodes at the scale its target needs."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from latentseg.cli import main
from latentseg.data import create_dataset
from latentseg.data.images import DEFAULT_MAX_PIXELS, PixelBudget, read_pair
from latentseg.errors import DatasetError
from tests.data.folders import make_folder

# Runs `latentseg datasets check` in a fresh process and prints the peak memory it added
# while checking (ru_maxrss after the check less ru_maxrss after the imports).
PEAK = """
import json, resource, sys
from latentseg.cli import build_parser, main
import latentseg.data.check, latentseg.data.folder  # imported before the baseline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
code = main(sys.argv[1:])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"code": code, "added_mb": (after - before) / 1024}))
"""


def peak_check(*args: str) -> tuple[int, float, str]:
    done = subprocess.run(
        [sys.executable, "-c", PEAK, "datasets", "check", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["code"], result["added_mb"], done.stdout + done.stderr


@pytest.fixture(scope="module")
def huge_folder(tmp_path_factory):
    """The probe: a folder of four small pairs and one 13000x13000 image with its mask."""
    root = make_folder(tmp_path_factory.mktemp("huge") / "data", count=8)
    Image.new("RGB", (13000, 13000), (40, 90, 200)).save(root / "images" / "huge.png")
    mask = Image.new("P", (13000, 13000), 1)
    mask.putpalette([0, 0, 0, 220, 40, 40, 40, 200, 60])
    mask.save(root / "masks" / "huge.png")
    return root


@pytest.mark.slow
def test_a_huge_png_is_refused_by_name_before_it_is_decoded(huge_folder, capsys):
    code, added_mb, out = peak_check(str(huge_folder), "--param", "image_size=32")
    assert code == 2, out
    assert "images/huge.png: 13000x13000 is 169.0 megapixels" in out
    assert f"{DEFAULT_MAX_PIXELS:,} pixels (data.params.max_pixels" in out
    assert "DecompressionBombWarning" not in out  # Pillow's own warning is not shown
    assert added_mb < 150, f"refusing took {added_mb:.0f} MB: the file was decoded"
    # training refuses the same folder before any run exists
    with pytest.raises(DatasetError, match=r"(?s)too large.*images/huge.png"):
        create_dataset("folder", root=str(huge_folder), image_size=32)


@pytest.mark.slow
def test_a_huge_png_under_a_raised_limit_is_read_in_bounded_memory(huge_folder):
    """Decoding takes the image once (3 bytes a pixel) and the mask once (1 byte): 0.7 GB for
    the probe, where the first reader held 4.5 GB."""
    code, added_mb, out = peak_check(
        str(huge_folder), "--param", "image_size=32", "--param", "max_pixels=200000000"
    )
    assert code == 0, out
    assert "13000x13000 (1)" in out and "ok: no problems found" in out
    pixels = 13000 * 13000
    assert added_mb * 2**20 < 5.5 * pixels, f"{added_mb:.0f} MB for {pixels / 1e6:.0f} MP"


def test_a_jpeg_decodes_at_the_scale_its_target_needs(tmp_path):
    """A 4000x3000 JPEG read for a 32x32 sample decodes at 1/8 scale (Pillow's draft), and
    the sample still matches the full decode fitted the same way."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    big = Image.fromarray(small).resize((4000, 3000), Image.BILINEAR)
    image_path, mask_path = tmp_path / "big.jpg", tmp_path / "big.png"
    big.save(image_path, quality=95)
    Image.new("L", (4000, 3000), 1).save(mask_path)
    pair = read_pair(image_path, mask_path, size=(32, 32), fit="crop")
    assert pair.image.shape == (32, 32, 3) and pair.mask.shape == (32, 32)
    assert pair.native == (3000, 4000) and pair.histogram == {1: 12_000_000}
    with Image.open(image_path) as img:
        img.draft("RGB", (43, 32))
        assert img.size == (500, 375)  # what read_pair asked Pillow for: 1/8 scale
        full = np.asarray(Image.open(image_path).convert("RGB"))
    from latentseg.data.images import fit_image

    reference = fit_image(full, (32, 32), "crop")
    assert np.abs(pair.image.astype(int) - reference.astype(int)).mean() < 4


def test_check_names_each_problem_file(tmp_path, capsys):
    root = make_folder(tmp_path / "data", count=8)
    Image.new("L", (60, 40), 90).save(root / "images" / "odd.jpg")
    Image.new("L", (61, 40), 0).save(root / "masks" / "odd.png")
    Image.new("RGB", (400, 400), 90).save(root / "images" / "wide.png")
    Image.new("L", (400, 400), 0).save(root / "masks" / "wide.png")
    Image.new("RGB", (20, 20), 90).save(root / "images" / "tall.png")
    Image.new("L", (20, 6000), 0).save(root / "masks" / "tall.png")
    assert main(["datasets", "check", str(root), "--param", "max_pixels=100000", "--json"]) == 2
    problems = {p["path"]: p for p in json.loads(capsys.readouterr().out)["problems"]}
    assert problems["masks/odd.png"]["kind"] == "size mismatch"
    assert problems["images/wide.png"]["kind"] == "too large"
    assert "400x400 is 0.2 megapixels" in problems["images/wide.png"]["detail"]
    assert problems["masks/tall.png"]["kind"] == "too large"  # the mask, not its image
    assert set(problems) == {"masks/odd.png", "images/wide.png", "masks/tall.png"}


def test_a_bad_limit_is_a_config_error(tmp_path, capsys):
    root = make_folder(tmp_path / "data", count=8)
    assert main(["datasets", "check", str(root), "--param", "max_pixels=0"]) == 2
    err = capsys.readouterr().err
    assert "max_pixels" in err and "Traceback" not in err


def test_the_budget_bounds_what_decodes_at_once():
    """Threads holding 40 pixels each of a 100-pixel budget: never more than two at once; a
    request above the whole budget waits to run alone instead of deadlocking."""
    budget = PixelBudget(100)
    lock = threading.Lock()
    held, peak, alone = [0], [0], []

    def work(pixels: int) -> None:
        with budget.hold(pixels):
            with lock:
                held[0] += min(pixels, 100)
                peak[0] = max(peak[0], held[0])
                if pixels > 100:
                    alone.append(held[0])
            time.sleep(0.01)
            with lock:
                held[0] -= min(pixels, 100)

    threads = [threading.Thread(target=work, args=(p,)) for p in [40] * 12 + [500, 40, 40]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert peak[0] <= 100 and peak[0] >= 80  # bounded, and still parallel
    assert alone == [100]  # the oversized one ran with nothing else decoding
