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
