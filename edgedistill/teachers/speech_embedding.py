"""Google's speech embedding (as openWakeWord ships it in ONNX) as a frozen audio teacher.

The model is the keyword-spotting backbone of Lin, Kilgour, Roblek and Sharifi, "Training
Keyword Spotters with Limited and Synthesized Speech Data" (ICASSP 2020, arXiv:2002.01322):
a stack of small convolutions over 76 log-mel frames (32 bands, 10 ms hop, 775 ms) giving a
96-dimensional embedding, pre-trained by Google on a large corpus of spoken English and
published on TF Hub (``google/speech_embedding/1``) under Apache-2.0. The paper shows a head
on these embeddings learns keywords from *synthesised* speech, which is how this project's
keyword recipe uses it. ``openwakeword==0.5.1`` (install with ``--no-deps``; 0.6 ships no
models) carries ONNX ports of the mel front end (``melspectrogram.onnx``) and the embedding
model (``embedding_model.onnx``); both are run by ONNX Runtime here, never imported from
openwakeword.

Pipeline for a clip [B, T] of 16 kHz float audio in [-1, 1] (as openWakeWord does it): scale
to the int16 range, mel front end -> [B, F, 32] with F = T / 160 - 3, ``mel / 10 + 2``, then
windows of 76 frames every 8 frames -> one 96-d embedding each, concatenated in time order:
[B, W * 96] with W = (F - 76) // 8 + 1 (3 for a 1 s clip). The teacher has no head for the
user's classes; ``teacher.adapt: {method: linear_probe}`` in a recipe trains one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgedistill.errors import DataError, RecipeError
from edgedistill.teachers.base import FrozenTeacher
from edgedistill.teachers.packaged import packaged_weights, register_packaged_teacher

INSTALL = "pip install --no-deps openwakeword==0.5.1"
EXTRA = "audio"
SAMPLE_RATE = 16_000
MEL_BANDS = 32
WINDOW_FRAMES = 76
STEP_FRAMES = 8
EMBEDDING_DIM = 96
MEL_FILE = "resources/models/melspectrogram.onnx"
MEL_SHA256 = "ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f"
EMBEDDING_FILE = "resources/models/embedding_model.onnx"
EMBEDDING_SHA256 = "70d164290c1d095d1d4ee149bc5e00543250a7316b59f31d056cff7bd3075c1f"


def embedding_windows(samples: int) -> int:
    """Embeddings W of a clip of ``samples`` 16 kHz samples (0 when it is under 0.79 s)."""
    frames = samples // 160 - 3
    return 0 if frames < WINDOW_FRAMES else (frames - WINDOW_FRAMES) // STEP_FRAMES + 1


class SpeechEmbedding(nn.Module):
    """The mel front end and the embedding model, run by ONNX Runtime (no gradients).

    Args:
        mel_path: ``melspectrogram.onnx`` (verified by the caller).
        embedding_path: ``embedding_model.onnx`` (verified by the caller).
        threads: ONNX Runtime intra-op threads per session.

    Shapes:
        waveform [B, T] float in [-1, 1] at 16 kHz, T >= 12,640 -> features [B, W * 96].
    """

    exportable = False  # ONNX Runtime sessions / a tokenizer inside: a torch-only row

    def __init__(self, mel_path: Path, embedding_path: Path, threads: int = 2) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.paths = (Path(mel_path), Path(embedding_path))
        self._mel = ort.InferenceSession(str(mel_path), options, ["CPUExecutionProvider"])
        self._embed = ort.InferenceSession(str(embedding_path), options, ["CPUExecutionProvider"])
        self.parameter_count = sum(_onnx_params(p) for p in self.paths)

    def mel(self, waveform: np.ndarray) -> np.ndarray:
        """[B, T] float audio in [-1, 1] -> openWakeWord's scaled log-mel [B, F, 32]."""
        spec = self._mel.run(None, {"input": (waveform * 32767.0).astype(np.float32)})[0]
        return (spec[:, 0] / 10.0 + 2.0).astype(np.float32)

    def forward_features(self, waveform: torch.Tensor) -> torch.Tensor:
        """Concatenated window embeddings [B, W * 96] of clips [B, T]."""
        if waveform.ndim != 2:
            raise DataError(f"the speech embedding takes clips [B, T], got {list(waveform.shape)}")
        count = embedding_windows(waveform.shape[1])
        if count == 0:
            raise DataError(
                f"the speech embedding needs clips of at least 0.79 s at {SAMPLE_RATE} Hz "
                f"(12640 samples), got {waveform.shape[1]}"
            )
        mel = self.mel(waveform.detach().cpu().float().numpy())
        starts = range(0, count * STEP_FRAMES, STEP_FRAMES)
        windows = np.stack([mel[:, s : s + WINDOW_FRAMES] for s in starts], axis=1)
        flat = windows.reshape(-1, WINDOW_FRAMES, MEL_BANDS, 1)
        embedded = self._embed.run(None, {"input_1": flat})[0]
        return torch.from_numpy(embedded.reshape(len(waveform), count * EMBEDDING_DIM).copy())

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.forward_features(waveform)

    def macs(self, input_shape: tuple[int, ...]) -> int:
        """Multiply-accumulates of one clip of ``input_shape`` = (T,): front end + W windows."""
        from edgedistill.teachers.onnx_teacher import onnx_macs

        count = embedding_windows(int(input_shape[-1]))
        front = onnx_macs(self.paths[0], tuple(input_shape))
        return front + count * onnx_macs(self.paths[1], (WINDOW_FRAMES, MEL_BANDS, 1))


def _onnx_params(path: Path) -> int:
    from edgedistill.teachers.onnx_teacher import onnx_param_count

    return onnx_param_count(path)


@register_packaged_teacher("speech_embedding", install=INSTALL, extra=EXTRA)
def _speech_embedding_from_card(
    path: Path, config: dict[str, Any], name: str, digest: str
) -> FrozenTeacher:
    """A card's speech embedding: ``weights`` is ``embedding_model.onnx`` of openwakeword;
    the mel front end next to it is verified against its own pin."""
    unknown = sorted(set(config) - {"threads"})
    if unknown:
        raise RecipeError(f"speech_embedding teacher: unknown option(s) {unknown}; known: threads")
    card = Path(name)
    mel = packaged_weights("speech_embedding", "openwakeword", MEL_FILE, MEL_SHA256, card)
    model = SpeechEmbedding(mel, path, threads=int(config.get("threads", 2)))
    from edgedistill.artifacts import sha256_json

    return FrozenTeacher(model, name, sha256_json({"embedding": digest, "mel": MEL_SHA256}))
