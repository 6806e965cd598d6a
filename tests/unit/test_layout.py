"""Layout rules: names per level, where files may live, renames, content types, size limits."""

from __future__ import annotations

import errno
import mimetypes

import pytest

from storefs.config import GiB, LayoutConfig, MiB, SizeLimits
from storefs.errors import LayoutError, NotPermitted, TooLarge
from storefs.layout import Layout


@pytest.fixture
def layout() -> Layout:
    return Layout(LayoutConfig(), SizeLimits(GiB, {"video": 10 * GiB, "image": 50 * MiB}))


def refused(code: int, call, *args) -> LayoutError:
    with pytest.raises(LayoutError) as exc:
        call(*args)
    assert exc.value.errno == code, str(exc.value)
    return exc.value


# ---- paths and keys ---------------------------------------------------------------


def test_split_and_key(layout) -> None:
    assert layout.split("/") == ()
    assert layout.split("/t1/image/b1/a1/x.png") == ("t1", "image", "b1", "a1", "x.png")
    assert layout.key("/") == ""
    assert layout.key("/t1/image/b1/a1/x.png") == "t1/image/b1/a1/x.png"
    assert layout.key("/t1/image/") == "t1/image"


def test_type_of(layout) -> None:
    assert layout.type_of("/") is None
    assert layout.type_of("/t1") is None
    assert layout.type_of("/t1/video") == "video"
    assert layout.type_of("/t1/video/b1/a1/clip.mp4") == "video"
    custom = Layout(LayoutConfig(levels=("project", "run")), SizeLimits())
    assert custom.type_of("/p/r/x") is None


def test_max_size(layout) -> None:
    assert layout.max_size("/t1/video/b1/a1/clip.mp4") == 10 * GiB
    assert layout.max_size("/t1/image/b1/a1/x.png") == 50 * MiB
    assert layout.max_size("/t1/audio/b1/a1/x.mp3") == GiB
    assert layout.max_size("/t1") == GiB


def test_too_large_has_efbig() -> None:
    assert TooLarge("x").errno == errno.EFBIG and issubclass(TooLarge, LayoutError)


# ---- names ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x.png", ".git", ".x.XXXXXX", "a b", "ü", "a" * 255, "é" * 127])
def test_check_name_accepts(layout, name) -> None:
    layout.check_name(name)


@pytest.mark.parametrize("name, why", [
    ("", "empty"), (".", "not a name"), ("..", "not a name"), ("a/b", "'/'"), ("a\0b", "NUL"),
    ("a" * 256, "256 bytes"), ("é" * 128, "256 bytes"), ("bad\udcff", "UTF-8"),
    ("line\nbreak", "U+000A"), ("tab\t", "U+0009"), ("del\x7f", "U+007F"),
])
def test_check_name_refuses(layout, name, why) -> None:
    err = refused(errno.EINVAL, layout.check_name, name)
    assert why in str(err)
    assert "\n" not in str(err)


# ---- folders ----------------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "/t1", "/user_123", "/t1/image", "/t1/metadata/b-1", "/t1/image/b1/avatar_2024.v2",
    "/t1/image/b1/a1/.git", "/t1/image/b1/a1/sub dir/.hidden", "/T/video/B/A",
])
def test_check_dir_accepts(layout, path) -> None:
    layout.check_dir(path)


@pytest.mark.parametrize("path, why", [
    ("/.hidden", "bad tenant name '.hidden'"),
    ("/-t", "bad tenant name"),
    ("/a b", "bad tenant name"),
    ("/" + "t" * 129, "bad tenant name"),
    ("/t1/images", "unknown type 'images' (allowed: image, video, audio, model, metadata)"),
    ("/t1/Image", "unknown type"),
    ("/t1/image/b 1", "bad board name 'b 1'"),
    ("/t1/image/b1/ä", "bad artifact name"),
    ("/t1/image/b1/a1/x\ny", "U+000A"),
    ("/t1/image/b1/a1/\udcff", "UTF-8"),
    ("/t1//b1", "empty"),
])
def test_check_dir_refuses(layout, path, why) -> None:
    err = refused(errno.EINVAL, layout.check_dir, path)
    assert why in str(err)
    assert "\n" not in str(err)


def test_root_can_not_be_created(layout) -> None:
    refused(errno.EINVAL, layout.check_dir, "/")


def test_types_unchecked_without_type_level() -> None:
    custom = Layout(LayoutConfig(levels=("project", "run"), name_pattern="[a-z]+"), SizeLimits())
    custom.check_dir("/proj/anything")
    assert "bad run name 'Run1': must match [a-z]+" in str(refused(errno.EINVAL, custom.check_dir, "/proj/Run1"))
    custom.check_file("/proj/run/File.TXT")


# ---- files ------------------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "/t1/image/b1/a1/original.png", "/t1/image/b1/a1/.original.png.Ab12Cd", "/t1/model/b/a/sub/deep/w.gguf",
])
def test_check_file_accepts(layout, path) -> None:
    layout.check_file(path)


@pytest.mark.parametrize("path, where", [
    ("/x.png", "tenant level (in the root folder)"), ("/t1/x.png", "type level (directly in a tenant folder)"),
    ("/t1/image/x.png", "board level (directly in a type folder)"),
    ("/t1/image/b1/x.png", "artifact level (directly in a board folder)"),
])
def test_file_above_artifact_level_is_eperm(layout, path, where) -> None:
    err = refused(errno.EPERM, layout.check_file, path)
    assert isinstance(err, NotPermitted)
    assert str(err) == f"{path}: files live inside an artifact folder (tenant/type/board/artifact/...), not at {where}"


@pytest.mark.parametrize("path", ["/t1/videos/b1/a1/x.mp4", "/t1/image/b 1/a1/x.png", "/t1/image/b1/a1/x\n"])
def test_check_file_checks_parents_and_name(layout, path) -> None:
    refused(errno.EINVAL, layout.check_file, path)


# ---- renames ----------------------------------------------------------------------


@pytest.mark.parametrize("old, new", [
    ("/t1/image/b1/a1", "/t1/image/b2/a9"),           # artifact to another board
    ("/t1/image/b1", "/t2/video/b1"),                 # board to another tenant and type
    ("/t1", "/t2"),
    ("/t1/image/b1/a1", "/t1/image/b1/a2/sub"),       # artifact becomes a sub-folder
    ("/t1/image/b1/a1/sub", "/t1/image/b1/a2"),       # sub-folder becomes an artifact
    ("/t1/image/b1/a1/x/y", "/t1/image/b1/a1/z"),
])
def test_dir_renames_allowed(layout, old, new) -> None:
    layout.check_rename(old, new, True)


@pytest.mark.parametrize("old, new", [
    ("/t1/image/b1", "/t1/image/b2/a1"),              # board to artifact level
    ("/t1/image/b1/a1", "/t1/image/a1"),              # artifact to board level
    ("/t1/image/b1/a1/sub", "/t1/image/sub"),
    ("/t1", "/t2/image"),
])
def test_dir_renames_across_levels_are_eperm(layout, old, new) -> None:
    err = refused(errno.EPERM, layout.check_rename, old, new, True)
    assert old in str(err) and new in str(err)


def test_dir_rename_target_name_checked(layout) -> None:
    refused(errno.EINVAL, layout.check_rename, "/t1/image/b1", "/t1/imagez/b1", True)


def test_file_renames(layout) -> None:
    layout.check_rename("/t1/image/b1/a1/.tmp123", "/t1/image/b1/a1/x.png", False)
    layout.check_rename("/t1/image/b1/a1/x.png", "/t2/video/b1/a1/sub/x.png", False)
    refused(errno.EPERM, layout.check_rename, "/t1/image/b1/a1/x.png", "/t1/image/b1/x.png", False)
    refused(errno.EINVAL, layout.check_rename, "/t1/image/b1/a1/x.png", "/t1/image/b1/a1/x\ty", False)


# ---- content types ----------------------------------------------------------------


@pytest.mark.parametrize("name, ctype", [
    ("x.png", "image/png"), ("X.PNG", "image/png"), ("x.jpg", "image/jpeg"), ("x.jpeg", "image/jpeg"),
    ("x.webp", "image/webp"), ("x.gif", "image/gif"), ("x.avif", "image/avif"), ("x.svg", "image/svg+xml"),
    ("x.mp4", "video/mp4"), ("x.webm", "video/webm"), ("x.mov", "video/quicktime"),
    ("x.mkv", "video/x-matroska"), ("x.mp3", "audio/mpeg"), ("x.wav", "audio/wav"), ("x.flac", "audio/flac"),
    ("x.ogg", "audio/ogg"), ("x.m4a", "audio/mp4"), ("x.json", "application/json"), ("x.txt", "text/plain"),
    ("w.safetensors", "application/octet-stream"), ("w.gguf", "application/octet-stream"),
    ("w.bin", "application/octet-stream"), ("w.pt", "application/octet-stream"),
    ("w.onnx", "application/octet-stream"), ("noext", "application/octet-stream"),
    ("data:x.png", "image/png"), ("a.tar.gz", "application/gzip"),
])
def test_content_type(layout, name, ctype) -> None:
    assert layout.content_type("/t1/image/b1/a1/" + name) == ctype


def test_content_types_do_not_touch_the_global_table(layout) -> None:
    layout.content_type("/t/image/b/a/x.gguf")
    assert ".gguf" not in mimetypes.types_map and ".gguf" not in mimetypes.common_types
