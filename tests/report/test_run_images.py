"""The report shows the images the best run logged (tracking.logged.PLOT_KEYS), each at the
run's best epoch, without the compressed copies."""

from pathlib import Path

import pandas as pd

from latentseg.report.render import _run_images
from latentseg.tracking.logged import PLOT_KEYS


class ImageStore:
    """The two store calls the images need: the artifact paths, and their download."""

    def artifact_paths(self, run_id: str, folder: str) -> list[str]:
        assert (run_id, folder) == ("best", "images")
        logged = [f"images/{key}+step+{step}+0.png" for key in PLOT_KEYS for step in (1, 2, 3)]
        return [*logged, "images/predictions+step+2+compressed.png", "images/notes.txt"]

    def download_artifacts(self, run_id: str, paths: list[str], into: str) -> list[str]:
        written = []
        for path in paths:
            target = Path(into) / Path(path).name
            target.write_bytes(path.encode())
            written.append(str(target))
        return written


def test_the_best_run_shows_each_logged_image_at_its_best_epoch():
    runs = pd.DataFrame(
        {"run_id": ["other", "best"], "metrics.test_miou": [0.4, 0.6], "metrics.best_epoch": [3, 2]}
    )
    images = _run_images(ImageStore(), runs, "test_miou", collected=None)
    assert images == {f"best_run_{key}": f"images/{key}+step+2+0.png".encode() for key in PLOT_KEYS}
