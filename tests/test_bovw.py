"""Dense SIFT and the bag of visual words: the descriptor against a literal per-patch version,
orientation and rotation, invariances, normalization; histograms of images built from known
patch types; batching, devices, checkpoints, bad inputs."""

import json
import math
import re

import numpy as np
import pytest
import torch

from mmfast.features import BagOfVisualWords, dense_sift
from mmfast.features.bovw import FLAT_WORD, grayscale


def _smooth_images(n, height, width, seed=0):
    """Gray images [n, 1, H, W] in [0, 1] with structure at several scales (noise blurred by
    a 5-tap binomial filter, contrast stretched)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, height + 4, width + 4, generator=g)
    taps = torch.tensor([1.0, 4, 6, 4, 1]) / 16
    x = torch.nn.functional.conv2d(x, taps.view(1, 1, 1, 5))
    x = torch.nn.functional.conv2d(x, taps.view(1, 1, 5, 1))
    return ((x - 0.5) * 4 + 0.5).clamp(0, 1)


def _literal_sift(gray: np.ndarray, top: int, left: int, patch_size: int,
                  gaussian_window: bool) -> np.ndarray:
    """Lowe's descriptor of the patch at (top, left), written from the definition in float64:
    every pixel of the image votes into the two orientation bins around its gradient angle and
    into the 4 x 4 cells with weights 1 - distance / cell (times the Gaussian window)."""
    padded = np.pad(gray.astype(np.float64), 1, mode="edge")
    dx = padded[1:-1, 2:] - padded[1:-1, :-2]
    dy = padded[:-2, 1:-1] - padded[2:, 1:-1]  # upwards: angles counter-clockwise on screen
    magnitude = np.hypot(dx, dy)
    position = np.arctan2(dy, dx) / (2 * np.pi) * 8
    lower = np.floor(position)
    upper_share = position - lower
    votes = np.zeros(gray.shape + (8,))
    rows, cols = np.indices(gray.shape)
    votes[rows, cols, lower.astype(int) % 8] += magnitude * (1 - upper_share)
    votes[rows, cols, (lower.astype(int) + 1) % 8] += magnitude * upper_share
    cell = patch_size / 4
    centres = (np.arange(4) + 0.5) * cell
    y = np.arange(gray.shape[0]) + 0.5 - top  # pixel centres in patch coordinates
    x = np.arange(gray.shape[1]) + 0.5 - left
    row_weight = np.clip(1 - np.abs(y[:, None] - centres) / cell, 0, None)  # [H, 4]
    col_weight = np.clip(1 - np.abs(x[:, None] - centres) / cell, 0, None)  # [W, 4]
    window = np.ones(gray.shape)
    if gaussian_window:
        sigma = patch_size / 2
        window = np.exp(-((y[:, None] - patch_size / 2) ** 2
                          + (x[None] - patch_size / 2) ** 2) / (2 * sigma**2))
    histogram = np.einsum("hr,wc,hw,hwk->rck", row_weight, col_weight, window, votes).ravel()
    histogram /= max(np.linalg.norm(histogram), 1e-12)
    histogram = np.minimum(histogram, 0.2)
    return histogram / max(np.linalg.norm(histogram), 1e-12)


def _grid(length, patch_size, stride):
    count = (length - patch_size) // stride + 1
    offset = (length - patch_size - (count - 1) * stride) // 2
    return [offset + i * stride for i in range(count)]


# ---- the descriptor
@pytest.mark.parametrize("patch_size, stride, gaussian_window", [
    (16, 8, True), (12, 5, False), (10, 3, True),  # 10: cells of 2.5 pixels
])
def test_dense_sift_matches_the_literal_definition(patch_size, stride, gaussian_window):
    images = _smooth_images(2, 37, 45)
    descriptors = dense_sift(images, patch_size, stride, gaussian_window).double()
    tops, lefts = _grid(37, patch_size, stride), _grid(45, patch_size, stride)
    assert descriptors.shape == (2, len(tops), len(lefts), 128)
    for n in range(2):
        gray = images[n, 0].numpy()
        for i, top in enumerate(tops):
            for j, left in enumerate(lefts):
                expected = _literal_sift(gray, top, left, patch_size, gaussian_window)
                np.testing.assert_allclose(descriptors[n, i, j].numpy(), expected, atol=2e-6)


def test_steps_put_their_energy_in_the_orientation_of_the_gradient():
    step = torch.zeros(1, 1, 32, 32)
    step[..., 16:] = 1  # dark to bright, left to right: gradient along +x, bin 0
    energy = {}
    for name, image in [("right", step), ("left", step.flip(-1)),
                        ("up", step.transpose(-1, -2).flip(-2))]:  # bright on top: bin 2
        energy[name] = dense_sift(image).view(-1, 8).sum(0)
    for name, direction in [("right", 0), ("left", 4), ("up", 2)]:
        assert energy[name][direction] > 0
        assert torch.count_nonzero(energy[name]) == 1, (name, energy[name])


def test_rotating_by_90_degrees_permutes_cells_and_bins():
    images = _smooth_images(3, 72, 72, seed=1)
    descriptors = dense_sift(images).view(3, 8, 8, 4, 4, 8)  # grid, cells, bins
    rotated = dense_sift(torch.rot90(images, 1, (-2, -1))).view(3, 8, 8, 4, 4, 8)
    # counter-clockwise: the grid and the cells turn with the image, every gradient by 2 bins
    expected = torch.rot90(torch.rot90(descriptors, 1, (1, 2)), 1, (3, 4)).roll(2, -1)
    torch.testing.assert_close(rotated, expected, atol=1e-6, rtol=0)


def test_brightness_scale_and_offset_leave_descriptors_unchanged():
    images = _smooth_images(2, 40, 40) * 0.4
    descriptors = dense_sift(images)
    torch.testing.assert_close(dense_sift(images * 2), descriptors, atol=0, rtol=0)
    torch.testing.assert_close(dense_sift(images + 0.3), descriptors, atol=1e-6, rtol=0)
    as_bytes = (images * 255).round()
    torch.testing.assert_close(dense_sift(as_bytes.to(torch.uint8)), dense_sift(as_bytes / 255))


def test_descriptors_are_unit_vectors_clipped_at_0_2():
    descriptors = dense_sift(_smooth_images(2, 48, 48)).view(-1, 128)
    torch.testing.assert_close(descriptors.norm(dim=1), torch.ones(len(descriptors)))
    assert descriptors.min() >= 0
    # One vertical step through the middle of a single patch lands in bin 0 of the 4 x 2 middle
    # cells. Unclipped, the outer rows (further from the centre) would be smaller; after the
    # first normalization every one of the 8 entries exceeds 0.2, so the clip makes them equal.
    step = torch.zeros(1, 1, 16, 16)
    step[..., 8:] = 1
    descriptor = dense_sift(step, 16, 8).view(4, 4, 8)
    assert torch.count_nonzero(descriptor) == 8
    torch.testing.assert_close(descriptor[:, 1:3, 0], torch.full((4, 2), 8 ** -0.5))


def test_flat_images_give_zero_descriptors_not_nan():
    flat = torch.full((2, 3, 20, 24), 0.37)
    descriptors = dense_sift(flat)
    assert descriptors.shape == (2, 1, 2, 128) and not descriptors.any()


def test_dense_sift_of_an_input_that_requires_grad_is_computed_without_autograd():
    images = _smooth_images(2, 24, 24)
    descriptors = dense_sift(images.clone().requires_grad_())
    assert not descriptors.requires_grad
    torch.testing.assert_close(descriptors, dense_sift(images), atol=0, rtol=0)


def test_grayscale_weights_and_transparency_over_white():
    rgba = torch.tensor([[255, 0, 0, 255], [0, 255, 0, 255], [0, 0, 255, 255], [9, 9, 9, 0],
                         [0, 0, 0, 128]], dtype=torch.uint8).T.reshape(1, 4, 1, 5)
    gray = grayscale(rgba)[0, 0]
    torch.testing.assert_close(gray, torch.tensor([0.299, 0.587, 0.114, 1.0, 1 - 128 / 255]))
    gray_alpha = torch.tensor([[0.2, 0.5]]).T.reshape(1, 2, 1, 1)  # 0.2 at half opacity
    torch.testing.assert_close(grayscale(gray_alpha), torch.tensor([[[0.6]]]))


def test_batched_devices_and_non_contiguous_input_agree(device):
    images = _smooth_images(4, 40, 52)
    expected = torch.cat([dense_sift(image[None]) for image in images])
    torch.testing.assert_close(dense_sift(images.to(device)).cpu(), expected, atol=1e-5, rtol=0)
    # a transposed copy transposed back: same values, other strides
    strided = images.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not strided.is_contiguous()
    torch.testing.assert_close(dense_sift(strided), expected, atol=0, rtol=0)
    rgb_last = images.expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(dense_sift(rgb_last), expected, atol=1e-6, rtol=0)


def test_agrees_with_kornia_where_the_pooling_is_alike():
    # kornia's dense SIFT pools each cell with a narrower triangle (one cell wide, not two) and
    # no Gaussian window, so only close, not equal; its angles turn the other way.
    kornia = pytest.importorskip("kornia")
    from kornia.feature.siftdesc import convert_sift_descriptor_layout

    images = _smooth_images(4, 72, 72)
    with torch.no_grad():
        theirs = kornia.feature.DenseSIFTDescriptor(rootsift=False, stride=8, padding=0)(
            images[..., 2:, 2:])  # cropped so its descriptor centres fall on ours
    theirs = convert_sift_descriptor_layout(theirs.permute(0, 2, 3, 1), "kornia", "opencv")
    ours = dense_sift(images, gaussian_window=False)
    same_place = (theirs * ours).sum(-1)
    next_place = (theirs[:, :, 1:] * ours[:, :, :-1]).sum(-1)  # one grid step apart
    assert same_place.mean() > 0.85 and same_place.min() > 0.75
    assert next_place.mean() < same_place.mean() - 0.2


def test_agrees_with_opencv_sift_on_grid_keypoints():
    # OpenCV smooths the image first (sigma 1.52 at octave 0) and centres a keypoint on a pixel
    # where ours lies between four: smoothed input, half a pixel apart, so close, not equal.
    cv2 = pytest.importorskip("cv2")
    images = (_smooth_images(4, 72, 72) * 255).round()
    sift = cv2.SIFT_create()
    starts = _grid(72, 16, 8)
    keypoints = [cv2.KeyPoint(left + 8.0, top + 8.0, 16 / 6) for top in starts for left in starts]
    for image in images[:, 0].numpy():
        _, theirs = sift.compute(image.astype(np.uint8), keypoints)
        smoothed = cv2.GaussianBlur(image, (0, 0), math.sqrt(1.6**2 - 0.5**2))
        ours = dense_sift(torch.from_numpy(smoothed)[None, None]).view(-1, 128)
        cosine = (torch.nn.functional.normalize(torch.from_numpy(theirs), dim=1) * ours).sum(1)
        assert cosine.mean() > 0.95 and cosine.min() > 0.9


# ---- the bag of visual words on images made of known 16 x 16 tiles
def _tile(kind: str) -> torch.Tensor:
    index = torch.arange(16)
    if kind == "flat":
        return torch.full((16, 16), 0.5)
    if kind == "horizontal":
        return (index // 2 % 2).float()[:, None].expand(16, 16)
    if kind == "vertical":
        return (index // 2 % 2).float()[None].expand(16, 16)
    return ((index // 4 % 2)[:, None] ^ (index // 4 % 2)[None]).float()  # checkerboard


KINDS = ("flat", "horizontal", "vertical", "checkerboard")


def _tiled(layout: list[list[str]]) -> torch.Tensor:
    """A gray image [1, 16 rows, 16 cols] of tiles. With 8-pixel patches every 16 pixels the grid
    puts one patch in the middle of each tile, and the patch with its pooling margin sees only
    its own tile: every tile of a kind has exactly the same descriptor."""
    return torch.cat([torch.cat([_tile(kind) for kind in row], 1) for row in layout])[None]


def _tiled_batch(counts_per_image: list[dict[str, int]]) -> torch.Tensor:
    images = []
    for counts in counts_per_image:
        kinds = [kind for kind, count in counts.items() for _ in range(count)]
        assert len(kinds) == 16
        images.append(_tiled([kinds[row * 4:row * 4 + 4] for row in range(4)]))
    return torch.stack(images)  # [N, 1, 64, 64]


@pytest.fixture(scope="module")
def tiles_model():
    training = _tiled_batch([{kind: 4 for kind in KINDS}] * 3)
    return BagOfVisualWords(num_words=4, patch_size=8, stride=16, norm="l1", device="cpu").fit(
        training, init="k-means++", progress=False)


def _borrowing(tiles_model, norm, device):
    """A model of tiles_model's words and geometry with another norm or device, using its
    codebook."""
    model = BagOfVisualWords(4, patch_size=8, stride=16, norm=norm, device=device)
    model.codebook = tiles_model.codebook
    return model


def test_histograms_count_the_known_tiles(tiles_model):
    pure = tiles_model.transform(_tiled_batch([{kind: 16} for kind in KINDS]), progress=False)
    # each kind is one word, flat patches the flat word, and the kinds get different words
    assert torch.equal(pure, pure.bool().float()) and pure.sum(1).tolist() == [1.0] * 4
    word = {kind: int(row.argmax()) for kind, row in zip(KINDS, pure)}
    assert word["flat"] == FLAT_WORD and len(set(word.values())) == 4
    mixes = [{"horizontal": 8, "vertical": 4, "checkerboard": 2, "flat": 2},
             {"vertical": 12, "flat": 4}, {"checkerboard": 1, "horizontal": 15}]
    histograms = tiles_model.transform(_tiled_batch(mixes), progress=False)
    for histogram, mix in zip(histograms, mixes):
        expected = torch.zeros(4)
        for kind, count in mix.items():
            expected[word[kind]] = count / 16
        torch.testing.assert_close(histogram, expected)


def test_l2_histograms_are_unit_length_and_flat_images_are_defined(tiles_model):
    model = _borrowing(tiles_model, norm="l2", device="cpu")
    histograms = model.transform(_tiled_batch([{"horizontal": 8, "vertical": 8},
                                               {"flat": 16}]), progress=False)
    torch.testing.assert_close(histograms.norm(dim=1), torch.ones(2))
    assert histograms[1].tolist() == [1.0, 0.0, 0.0, 0.0]  # FLAT_WORD only


def test_fit_is_deterministic_for_a_seed_and_leaves_flat_patches_out_of_kmeans():
    images = (_smooth_images(12, 40, 40, seed=3) * 255).to(torch.uint8)
    images[:4] = 128  # flat images: their patches must not become k-means words
    first = BagOfVisualWords(16, patch_size=8, stride=4, seed=5, device="cpu").fit(
        images, max_descriptors=400, iters=5, progress=False)
    again = BagOfVisualWords(16, patch_size=8, stride=4, seed=5, device="cpu").fit(
        images, max_descriptors=400, iters=5, progress=False)
    assert torch.equal(first.codebook, again.codebook)
    assert not first.codebook[FLAT_WORD].any()
    assert (first.codebook[1:].norm(dim=1) > 0.5).all()


def test_codebook_and_histograms_are_ordinary_tensors(tiles_model):
    # not inference tensors: the histograms feed a model that trains, the codebook can change
    histograms = tiles_model.transform(_tiled_batch([{"horizontal": 8, "flat": 8}] * 2),
                                       progress=False)
    assert not histograms.is_inference()
    linear = torch.nn.Linear(4, 2)
    linear(histograms).square().sum().backward()
    assert linear.weight.grad.abs().sum() > 0
    assert not tiles_model.codebook.is_inference()
    tiles_model.codebook += 0  # in place, as an inference tensor refuses; adds nothing


def test_transform_batches_sizes_lists_and_files_alike(tmp_path, tiles_model):
    from PIL import Image

    wide = _tiled([["vertical"] * 6 + ["flat"] * 2, ["checkerboard"] * 8])  # [1, 32, 128]
    square = _tiled_batch([{"horizontal": 10, "checkerboard": 6}])[0]
    batch = torch.stack([square, square.flip(-1), square.flip(-2)])
    expected = torch.cat([tiles_model.transform(image[None], progress=False) for image in batch])
    for batch_size in (1, 2, 64):
        torch.testing.assert_close(tiles_model.transform(batch, batch_size, progress=False),
                                   expected)
    mixed = tiles_model.transform([square, wide, square.flip(-1)], batch_size=1, progress=False)
    torch.testing.assert_close(mixed[[0, 2]], expected[:2])
    torch.testing.assert_close(mixed[1], tiles_model.transform(wide[None], progress=False)[0])
    # files are read at their own size, RGBA over white; uint8 gray and RGBA agree with floats
    path = tmp_path / "wide.png"
    pixels = (wide[0] * 255).round().to(torch.uint8)
    Image.fromarray(pixels.numpy()).convert("RGBA").save(path)
    from_file = tiles_model.transform([str(path), path], progress=False)
    torch.testing.assert_close(from_file, mixed[[1, 1]])
    rgba = torch.cat([pixels[None].expand(3, -1, -1), torch.full_like(pixels[None], 255)])
    torch.testing.assert_close(tiles_model.transform([rgba], progress=False), mixed[[1]])


def test_empty_input_gives_empty_histograms(tiles_model):
    assert tiles_model.transform(torch.zeros(0, 3, 64, 64), progress=False).shape == (0, 4)
    assert tiles_model.transform([], progress=False).shape == (0, 4)


def test_transform_on_the_device(device, tiles_model):
    # tiles_model's codebook is on the CPU: transform moves it to the device
    model = _borrowing(tiles_model, norm="l1", device=device)
    images = _tiled_batch([{"horizontal": 8, "vertical": 8}, {"flat": 16}])
    expected = tiles_model.transform(images, progress=False)
    torch.testing.assert_close(model.transform(images, progress=False), expected)


def test_save_load_round_trip(tmp_path, tiles_model):
    tiles_model.save(tmp_path / "bovw")
    assert sorted(p.name for p in (tmp_path / "bovw").iterdir()) == [
        "codebook.safetensors", "config.json"]  # no temporary files left behind
    loaded = BagOfVisualWords.load(tmp_path / "bovw", device="cpu")
    assert loaded.config() == tiles_model.config()
    assert torch.equal(loaded.codebook, tiles_model.codebook)
    images = _tiled_batch([{"checkerboard": 5, "flat": 11}])
    torch.testing.assert_close(loaded.transform(images, progress=False),
                               tiles_model.transform(images, progress=False))
    config = json.loads((tmp_path / "bovw" / "config.json").read_text())
    (tmp_path / "bovw" / "config.json").write_text(json.dumps({**config, "num_words": 5}))
    with pytest.raises(ValueError, match=r"codebook .* has shape \(4, 128\), the config expects"):
        BagOfVisualWords.load(tmp_path / "bovw")
    (tmp_path / "bovw" / "config.json").write_text(json.dumps({**config, "kind": "PCA"}))
    with pytest.raises(ValueError, match="not a BagOfVisualWords config"):
        BagOfVisualWords.load(tmp_path / "bovw")


def test_a_save_cut_short_over_an_earlier_one_leaves_no_loadable_model(tmp_path, tiles_model,
                                                                       monkeypatch):
    from mmfast.features import bovw

    tiles_model.save(tmp_path)
    other = BagOfVisualWords(5, patch_size=8, stride=16, device="cpu")
    other.codebook = torch.rand(5, 128)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(bovw, "write_text_atomic", crash)
    with pytest.raises(OSError, match="disk full"):
        other.save(tmp_path)  # the new codebook is written, its config is not
    # the old config next to the new codebook would mix two models: it is gone
    with pytest.raises(FileNotFoundError, match="no config.json: never saved, or its save did "
                                                "not finish"):
        BagOfVisualWords.load(tmp_path)


def test_bad_inputs(tmp_path, tiles_model):
    from PIL import Image

    image = torch.rand(2, 3, 32, 32)
    small_file = tmp_path / "small.png"
    Image.new("RGB", (32, 6)).save(small_file)
    with pytest.raises(RuntimeError, match="not fitted: call fit"):
        BagOfVisualWords(8).transform(image)
    with pytest.raises(RuntimeError, match="not fitted: nothing to save"):
        BagOfVisualWords(8).save("unused")
    cases = [
        (image[0], ValueError, r"images must have shape \[N, C, H, W\], got \(3, 32, 32\)"),
        (torch.rand(2, 5, 32, 32), ValueError, "1 .* or 4 .* channels, got 5"),
        (image.to(torch.int32), TypeError, "uint8 or floating, got torch.int32"),
        (image[..., :7], ValueError, r"at least patch_size=8 pixels on each side, got 32 x 7"),
        (image.index_put((torch.tensor(1),), torch.tensor(float("nan"))), ValueError, "finite"),
        (image.index_put((torch.tensor(0),), torch.tensor(float("inf"))), ValueError, "finite"),
        (torch.rand(1, 4, 32, 32) * 2, ValueError, r"alpha channel .* must be in \[0, 1\]"),
        ([image[0], 3], TypeError, r"images\[1\] must be a \[C, H, W\] tensor"),
        ([image[0], image], ValueError, r"images\[1\] must have shape \[C, H, W\]"),
        ("image.png", TypeError, "images must be a tensor"),
        # errors name the image
        (image.index_put((torch.tensor(1), torch.tensor(2)), torch.tensor(float("nan"))),
         ValueError, r"images\[1\] must be finite"),
        ([image[0], image[1].index_put((torch.tensor(0),), torch.tensor(float("inf")))],
         ValueError, r"images\[1\] must be finite"),
        ([image[0], image[1, :, :5]], ValueError,
         r"images\[1\] must be at least patch_size=8 pixels on each side, got 5 x 32"),
        ([image[0], small_file], ValueError,
         rf"images\[1\] \({re.escape(str(small_file))}\) must be at least patch_size=8"),
    ]
    for images, error, message in cases:
        with pytest.raises(error, match=message):
            tiles_model.transform(images, progress=False)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        tiles_model.transform(image, batch_size=0)
    with pytest.raises(ValueError, match="images must hold at least one image"):
        BagOfVisualWords(8).fit([])
    with pytest.raises(ValueError, match="give 32 descriptors .* than the num_words - 1 = 99"):
        BagOfVisualWords(100, patch_size=8, stride=8, device="cpu").fit(image, progress=False)
    with pytest.raises(ValueError, match="max_descriptors must be an integer >= num_words=8"):
        BagOfVisualWords(8).fit(image, max_descriptors=7)
    with pytest.raises(ValueError, match="init must be one of .*, got 'kmeans'"):
        BagOfVisualWords(8).fit(image, init="kmeans")
    for kwargs, message in [({"num_words": 2}, r"num_words must be an integer in \[3, 65536\]"),
                            ({"norm": "l3"}, "norm must be one of"),
                            ({"patch_size": 3}, "patch_size must be an integer >= 4"),
                            ({"stride": 0}, "stride must be an integer >= 1, got 0")]:
        with pytest.raises(ValueError, match=message):
            BagOfVisualWords(**{"num_words": 8, **kwargs})
