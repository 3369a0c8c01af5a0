"""PixelMemory: batch pixel buffers are reused only once nothing can see them."""
import gc

import numpy as np
import torch

from mixdata.loading.collate import PixelMemory


def test_a_dropped_batch_gives_its_memory_to_the_next():
    memory = PixelMemory(keep=1)
    first = memory((4, 8, 8, 3))
    pointer = first.data_ptr()
    del first
    gc.collect()
    assert memory((3, 8, 8, 3)).data_ptr() == pointer  # smaller fits in the same buffer


def test_memory_a_caller_still_sees_is_never_reused():
    memory = PixelMemory(keep=2)
    held = memory((4, 8, 8, 3))
    held.fill_(1)
    view = held.permute(0, 3, 1, 2)[1:]  # derived tensors keep the buffer lent
    array = memory((4, 8, 8, 3)).numpy()  # and so do arrays taken from a batch
    del held
    gc.collect()
    third = memory((4, 8, 8, 3))  # both slots lent: a fresh, unpooled buffer
    third.fill_(2)
    assert (view == 1).all()
    assert len({t.data_ptr() for t in (view, torch.from_numpy(array), third)}) == 3


def test_a_larger_batch_replaces_a_free_buffer_that_is_too_small():
    memory = PixelMemory(keep=1)
    small = memory((1, 8, 8, 3))
    del small
    large = memory((40, 8, 8, 3))
    assert large.shape == (40, 8, 8, 3) and len(memory.slots) == 1
    assert memory.slots[0][0].size >= large.numel()
    assert memory((0, 8, 8, 3)).shape == (0, 8, 8, 3)
    assert np.shares_memory(large.numpy(), memory.slots[0][0])
