"""CPU dropout masks: the compiled SFC64 loop draws NumPy's stream, bit for bit, and the masks are dropout masks."""

import numpy as np
import pytest
import torch

from transfer.training.masks import MaskSource, _draw_16bit


def _numpy_masks(seed):
    """The earlier, NumPy-only construction: random_raw words cut into four int16 uniforms, compared, scaled."""
    generator = np.random.Generator(np.random.SFC64(seed))

    def draw(shape, p, dtype):
        n = int(np.prod(shape))
        raw = generator.bit_generator.random_raw((n + 3) // 4).view(np.int16)[:n]
        keep = torch.from_numpy(raw >= round(p * 65536) - 32768).view(shape)
        return keep.to(dtype) * (1.0 / (1.0 - p))

    return generator, draw


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_masks_are_numpys_sfc64_stream_bit_for_bit(dtype):
    """Consecutive draws of odd and even sizes (a last, partial word each time) give NumPy's masks."""
    seed = np.random.SeedSequence([3, 1, 4, 1, 5])
    ours = MaskSource(seed)
    generator, theirs = _numpy_masks(seed)
    for shape, p in [((7, 3), 0.1), ((4, 5, 6, 9), 0.1), ((1,), 0.3), ((2, 12, 33, 33), 0.1), ((33, 384), 0.05),
                     ((5,), 0.5), ((4096,), 1 / 3)]:
        got = ours.scaled_mask(torch.Size(shape), p, dtype)
        expected = theirs(shape, p, dtype)
        assert got.dtype == dtype and got.shape == torch.Size(shape)
        assert torch.equal(got.view(-1).view(torch.uint8), expected.view(-1).view(torch.uint8)), (shape, p)
    assert np.array_equal(ours.state()["state"]["state"], generator.bit_generator.state["state"]["state"])


def test_the_compiled_generator_advances_the_state_as_numpy_does():
    state = np.array(np.random.SFC64(42).state["state"]["state"], dtype=np.uint64)
    reference = np.random.SFC64(42)
    for n in (0, 1, 3, 4, 5, 1001):
        out = np.empty(n, dtype=np.int16)
        _draw_16bit(state, out)
        assert np.array_equal(out, reference.random_raw((n + 3) // 4).view(np.int16)[:n]), n
        assert np.array_equal(state, reference.state["state"]["state"]), n


def test_mask_source_keeps_the_right_fraction_and_replays_from_its_state():
    source = MaskSource(11)
    state = source.state()
    keep = source.keep_mask(torch.Size([1000, 1000]), 0.1)
    assert keep.dtype == torch.bool
    assert abs(keep.float().mean().item() - 0.9) < 0.002  # p rounded to 6554 / 65536
    source.set_state(state)
    assert torch.equal(source.keep_mask(torch.Size([1000, 1000]), 0.1), keep)
    assert not torch.equal(MaskSource(12).keep_mask(torch.Size([1000, 1000]), 0.1), keep)
    assert source.keep_mask(torch.Size([7, 3]), 0.0).all()  # odd sizes; p = 0 keeps everything


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_scaled_mask_is_the_boolean_mask_times_the_scale_bit_for_bit(dtype):
    """The fast mask writes bit patterns; it must equal keep_mask(...).to(dtype) * scale, from the same draws."""
    for p in (0.1, 0.05, 0.2, 0.3, 0.5, 1 / 3, 0.9, 0.0):
        fast, plain = MaskSource(5), MaskSource(5)
        for shape in (torch.Size([7, 3]), torch.Size([4, 5, 6, 9])):  # odd sizes: the draws are cut 4 per word
            got = fast.scaled_mask(shape, p, dtype)
            expected = plain.keep_mask(shape, p).to(dtype) * (1.0 / (1.0 - p))
            assert got.dtype == dtype and got.shape == shape
            assert torch.equal(got.view(-1).view(torch.uint8), expected.view(-1).view(torch.uint8)), (p, shape)
        # the stream advanced the same way: the next draws agree
        assert torch.equal(fast.keep_mask(torch.Size([64]), 0.5), plain.keep_mask(torch.Size([64]), 0.5))


