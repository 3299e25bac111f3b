import numpy as np

from edge.localize import box, defect_map


def test_box_surrounds_the_hot_cells_in_frame_coordinates():
    cam = np.zeros((4, 4, 2), np.float32)
    cam[..., 0] = 1.0  # good everywhere...
    cam[1, 2] = [0.1, 0.9]  # ...but a defect in row 1, column 2
    dmap = defect_map(cam[None], good_index=0)
    assert dmap.shape == (4, 4) and dmap.max() == np.float32(0.9)
    x, y, w, h = box(dmap, (480, 640))
    # cell (1, 2) covers x 320-480, y 120-240: the box is centred on it and no larger than two cells
    assert abs(x + w / 2 - 400) <= 20 and abs(y + h / 2 - 180) <= 20
    assert 40 <= w <= 320 and 30 <= h <= 240
    x2, y2, _, _ = box(dmap, (480, 640), offset=(100, 50))
    assert (x2, y2) == (x + 100, y + 50)
    assert box(np.zeros((4, 4), np.float32), (480, 640)) is None


def test_a_confident_good_map_still_ranks_its_cells():
    """Logits so sure of `good` that p(good) rounds to 1.0 in float32: the defect map must keep the order of
    the cells (1 - p(good) would be 0 everywhere and leave a rejected part without a box)."""
    from edge.classifiers.base import softmax

    logits = np.zeros((3, 3, 2), np.float32)
    logits[..., 0] = 30.0  # good
    logits[1, 2, 1] = 12.0  # the least sure cell
    probs = softmax(logits)
    assert np.all(probs[..., 0] == 1.0)  # the float32 rounding this guards against
    dmap = defect_map(probs, good_index=0)
    assert dmap.max() > 0 and np.unravel_index(int(np.argmax(dmap)), dmap.shape) == (1, 2)
    assert box(dmap, (96, 96)) is not None
