"""Dropout masks for CPU tensors from seeded SFC64 streams (the lean forward's dropout, ``fast_bert``).

``torch.bernoulli_`` spends about 4-5 ns per element in a single Mersenne-Twister stream, a quarter of a training
step. A :class:`MaskSource` instead takes 64-bit words from an SFC64 generator (the one NumPy ships, seeded the
same way) and cuts each into four 16-bit uniforms, so ``p`` is rounded to a multiple of 1/65536 (0.1 becomes
0.100006). The masks are written straight in the tensor's dtype: 0 or the scale 1/(1-p) as that dtype's bit
pattern, which is what ``keep.to(dtype) * scale`` gives, without a bool-to-float conversion.

The words are drawn by a compiled loop (``_draw_16bit``) that advances the same four-word state as NumPy's
``SFC64.random_raw``, so every mask is the one NumPy's stream would give, bit for bit (a test compares them), and
stored runs keep their masks. NumPy's own loop calls the generator through a function pointer per word and needs
two more passes over the draws to compare and scale them; the compiled one runs the generator inline and scales in
place, for less than half the time per mask on the AMX Xeon (README, Performance).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

# a float dtype's same-width integer types (torch, NumPy), to write a float's bit pattern
_SAME_WIDTH_INT = {torch.bfloat16: (torch.int16, np.int16), torch.float16: (torch.int16, np.int16),
                   torch.float32: (torch.int32, np.int32)}


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _draw_16bit(state: np.ndarray, out: np.ndarray) -> None:
    """Fill ``out`` (int16) with the next len(out) 16-bit uniforms of the SFC64 ``state`` [a, b, c, counter].

    Four per 64-bit word, low half first, as ``random_raw(...).view(np.int16)`` reads them; a last, partial word is
    drawn whole and its unused quarters dropped, as NumPy's ``random_raw((n + 3) // 4)`` does.
    """
    a, b, c, w = state[0], state[1], state[2], state[3]
    n = out.shape[0]
    full = n // 4
    words = out[:4 * full].view(np.uint64)
    for i in range(full):  # SFC64's step (O'Neill's reference and NumPy's sfc64_next)
        draw = a + b + w
        w += np.uint64(1)
        a = b ^ (b >> np.uint64(11))
        b = c + (c << np.uint64(3))
        c = ((c << np.uint64(24)) | (c >> np.uint64(40))) + draw
        words[i] = draw
    if 4 * full < n:
        draw = a + b + w
        w += np.uint64(1)
        a = b ^ (b >> np.uint64(11))
        b = c + (c << np.uint64(3))
        c = ((c << np.uint64(24)) | (c >> np.uint64(40))) + draw
        for j in range(n - 4 * full):
            out[4 * full + j] = np.int16(np.uint16((draw >> np.uint64(16 * j)) & np.uint64(0xFFFF)))
    state[0], state[1], state[2], state[3] = a, b, c, w


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _scaled_16bit(state: np.ndarray, out: np.ndarray, threshold: np.int16, bits: np.int16) -> None:
    """``out`` (int16) becomes ``bits`` where the next uniform is at least ``threshold``, else 0 (bf16, fp16)."""
    _draw_16bit(state, out)
    for i in range(out.shape[0]):  # a separate pass: this one vectorises, the generator cannot
        out[i] = bits if out[i] >= threshold else np.int16(0)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _scaled_32bit(state: np.ndarray, uniforms: np.ndarray, out: np.ndarray, threshold: np.int16,
                  bits: np.int32) -> None:
    """The same for int32 ``out`` (fp32), through the int16 buffer ``uniforms``."""
    _draw_16bit(state, uniforms)
    for i in range(out.shape[0]):
        out[i] = bits if uniforms[i] >= threshold else np.int32(0)


class MaskSource:
    """Dropout masks for CPU tensors from a seeded SFC64 stream (four 16-bit uniforms per draw)."""

    def __init__(self, seed: int | np.random.SeedSequence):
        # NumPy seeds the four words (from a SeedSequence); from then on the compiled loop advances them
        self._state = np.array(np.random.SFC64(seed).state["state"]["state"], dtype=np.uint64)

    def keep_mask(self, shape: torch.Size, p: float) -> torch.Tensor:
        """Boolean tensor, each element True with probability 1 - p (p rounded to a multiple of 2^-16)."""
        return torch.from_numpy(self._uniforms(math.prod(shape)) >= _threshold(p)).view(shape)

    def scaled_mask(self, shape: torch.Size, p: float, dtype: torch.dtype) -> torch.Tensor:
        """``keep_mask(shape, p).to(dtype) * (1 / (1 - p))``, bit for bit, from the same draws, built faster.

        Each element is 0 or the scale rounded to ``dtype``, so the mask is written as that value's bit pattern:
        torch's bool-to-bf16 conversion and the multiply by the scale took about five times as long as drawing
        the bits (0.5 + 0.4 ms against 0.2 for a 32 x 60 x 384 mask).
        """
        n = math.prod(shape)
        ints = _SAME_WIDTH_INT.get(dtype)
        if ints is None:  # no integer twin (float64): the plain way, same values
            return self.keep_mask(shape, p).to(dtype) * (1.0 / (1.0 - p))
        # the scale as a multiply by 1.0 rounds it: through the float opmath torch uses for 16-bit types
        bits = torch.tensor(1.0 / (1.0 - p), dtype=torch.float32).to(dtype).view(ints[0]).item()
        out = np.empty(n, dtype=ints[1])
        if ints[1] is np.int16:
            _scaled_16bit(self._state, out, np.int16(_threshold(p)), np.int16(bits))
        else:
            _scaled_32bit(self._state, np.empty(n, dtype=np.int16), out, np.int16(_threshold(p)), np.int32(bits))
        return torch.from_numpy(out).view(shape).view(dtype)

    def _uniforms(self, n: int) -> np.ndarray:
        out = np.empty(n, dtype=np.int16)
        _draw_16bit(self._state, out)
        return out

    def state(self) -> dict:
        """The stream's position, in NumPy's ``SFC64.state`` form."""
        return {"bit_generator": "SFC64", "state": {"state": self._state.copy()}, "has_uint32": 0, "uinteger": 0}

    def set_state(self, state: dict) -> None:
        self._state[:] = np.asarray(state["state"]["state"], dtype=np.uint64)


def _threshold(p: float) -> int:
    """Uniforms on [-32768, 32767] at or above this are kept: a share 1 - round(p * 65536) / 65536 of them."""
    return round(p * 65536) - 32768
