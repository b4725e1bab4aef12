"""gaugan.data.io's atomic writers: the destination appears whole or not at all, no temporary
file is left behind on any failure, and errors name the destination."""

from __future__ import annotations

import pytest
from PIL import Image

from gaugan.data.io import atomic_save_image, atomic_write, atomic_write_text


def test_a_failed_or_interrupted_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "report.json"
    atomic_write_text(path, "old")

    def interrupted(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, interrupted)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_errors_name_the_destination_not_the_temporary_file(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(NotADirectoryError) as error:
        atomic_write_text(tmp_path / "a_file" / "sub" / "x.txt", "text")
    assert error.value.filename == str(tmp_path / "a_file") and "is a file, not a folder" in str(error.value)
    with pytest.raises(IsADirectoryError) as error:
        atomic_write_text(tmp_path, "text")
    assert error.value.filename == str(tmp_path)

    def unwritable(tmp):
        raise PermissionError(13, "Permission denied", str(tmp))

    with pytest.raises(PermissionError) as error:
        atomic_write(tmp_path / "out.png", unwritable)
    assert error.value.filename == str(tmp_path / "out.png")


def test_images_are_written_in_the_format_their_suffix_names(tmp_path):
    image = Image.new("RGB", (8, 8), (200, 30, 30))
    for name, image_format in (("a.png", "PNG"), ("b.jpg", "JPEG"), ("c.webp", "WEBP")):
        atomic_save_image(image, tmp_path / name)
        assert Image.open(tmp_path / name).format == image_format
    with pytest.raises(ValueError, match=r"x.bmp: cannot tell the image format from the suffix '.bmp'"):
        atomic_save_image(image, tmp_path / "x.bmp")
