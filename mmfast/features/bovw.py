"""Bag of visual words (paper 002, DESIGN 3.3): dense SIFT descriptors on a grid, a k-means
codebook, one hard-assigned visual word per descriptor, a length-normalized histogram per image.

``dense_sift`` is Lowe's descriptor (IJCV 2004, section 6.1) for every patch of a regular grid at
once, in plain torch, batched, on any device: image gradients by central differences, each
pixel's magnitude split between the two nearest of 8 orientation bins (linear in the angle),
pooled into 4 x 4 cells with triangular (bilinear) spatial weights reaching half a cell past the
patch and, optionally, Lowe's Gaussian window (sigma half the patch width); the 128 values are
L2-normalized, clipped at 0.2 and L2-normalized again. Layout and angles are OpenCV's: entry
``(row * 4 + col) * 8 + bin``, bin ``k`` centred on ``k * 45`` degrees counter-clockwise from +x
as the image is seen (rows grow downwards), so a dark-to-bright step from left to right is bin 0
and one from bottom to top bin 2.

Why not kornia's ``DenseSIFTDescriptor`` or OpenCV's SIFT on grid keypoints: both do work a regular
grid does not need. kornia convolves each of the 8 orientation maps at full resolution, then
gathers the cells; OpenCV recomputes the gradient of every pixel around every keypoint, so
overlapping patches repeat the work. Here the map is built once and both pooling passes are 1-D and
evaluate only the cells the grid needs: along an axis, the weights of one patch's 4 cells
(triangles times the Gaussian, both separable) form a fixed kernel, so pooling is a strided 1-D
convolution, run as one matrix product per chunk of ``_PATCHES_PER_CHUNK`` neighbouring patches. On
256 of the 72 x 72 demo images on one thread (benchmarks/bench_autoencoders.py, three runs) the
descriptors come ~3x faster than OpenCV's per-image loop and ~5x faster than kornia's, batched like
ours; the histograms (descriptors, then the same batched assignment for everyone) ~2x faster than
with OpenCV's descriptors and ~5x than with kornia's per image, and further ahead on two threads.
"""

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.nn import functional as F
from tqdm import tqdm

from mmfast._io import save_tensors_atomic, write_text_atomic
from mmfast.features.image import load_image
from mmfast.ops.pq_encode import pq_encode
from mmfast.quant.kmeans import KMEANS_INITS, kmeans

NUM_CELLS = 4  # spatial cells per side of a patch
NUM_ORIENTATIONS = 8
DESCRIPTOR_DIM = NUM_CELLS * NUM_CELLS * NUM_ORIENTATIONS  # 128
FLAT_WORD = 0  # the visual word of patches without gradient (zero descriptors)
NORMS = ("l2", "l1")
_CLIP = 0.2  # Lowe's cap on one entry of the unit descriptor: less weight on a few strong edges
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, what PIL's convert("L") and OpenCV use
_PATCHES_PER_CHUNK = 8  # neighbouring patches pooled by one kernel matrix (see _AxisGrid)
# Images per internal batch are also capped by pixels, so the 8 orientation maps of a batch (32 B
# a pixel, ~8 MB) stay in cache: on CPU ~50 images of 72 x 72 a batch run ~1.5x faster than 256.
_PIXELS_PER_BATCH = 1 << 18
_CONFIG = "config.json"
_WEIGHTS = "codebook.safetensors"


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """Intensity [N, H, W] (float32 in [0, 1] for uint8 input) of images [N, C, H, W]: C = 1
    gray, 2 gray + alpha, 3 RGB, 4 RGBA; uint8 in [0, 255] or floating in [0, 1]. Transparency
    is composited over white, as ``load_image`` does (the demo's emoji are drawn on a transparent
    background)."""
    _check_images("images", images)
    return _grayscale(images, lambda index: f"images[{index}]")


def _grayscale(images: torch.Tensor, describe) -> torch.Tensor:
    """``grayscale`` of checked images; ``describe(i)`` names image i of the batch in errors."""
    if images.dtype == torch.uint8:
        x = images.float() / 255
    else:
        x = images.float()
        # one reduction, no boolean mask: the sum is finite exactly when every pixel is
        if x.numel() and not math.isfinite(float(x.sum())):
            bad = int((~torch.isfinite(x)).flatten(1).any(1).nonzero()[0, 0])
            raise ValueError(f"{describe(bad)} must be finite, found a NaN or infinite pixel")
    channels = x.shape[1]
    if channels in (2, 4):
        alpha = x[:, -1]
        if images.is_floating_point() and alpha.numel():
            low, high = (float(value) for value in alpha.aminmax())
            if low < 0 or high > 1:
                raise ValueError(f"images: the alpha channel of a floating image must be in "
                                 f"[0, 1], got values in [{low}, {high}]")
    if channels >= 3:
        luma = x.new_tensor(_LUMA).view(1, 3, 1, 1)
        gray = (x[:, :3] * luma).sum(1)
    else:
        gray = x[:, 0]
    if channels in (2, 4):
        gray = gray * alpha + (1 - alpha)
    return gray


def dense_sift(images: torch.Tensor, patch_size: int = 16, stride: int = 8,
               gaussian_window: bool = True) -> torch.Tensor:
    """SIFT descriptors [N, rows, cols, 128] of the ``patch_size`` squares every ``stride``
    pixels of images [N, C, H, W] (see ``grayscale`` for C and dtypes), on the images' device.

    ``rows = (H - patch_size) // stride + 1`` (``cols`` likewise); the grid is centred, so a
    leftover margin is split between the two sides. A patch without gradient (flat) gets a zero
    descriptor. The descriptor does not change when the intensity is scaled by a positive factor
    or shifted by a constant (up to rounding). Not differentiable: it runs without autograd
    (its in-place steps could not be), so the result never requires grad."""
    _check_geometry(patch_size, stride)
    with torch.no_grad():
        gray = grayscale(images)
        return _describe(gray, patch_size, stride, gaussian_window)


def _describe(gray: torch.Tensor, patch_size: int, stride: int,
              gaussian_window: bool) -> torch.Tensor:
    """Descriptors [N, rows, cols, 128] of intensity images [N, H, W]."""
    n, height, width = gray.shape
    _check_size("images", (height, width), patch_size)
    rows = _AxisGrid(height, patch_size, stride)
    cols = _AxisGrid(width, patch_size, stride)
    maps = _orientation_maps(gray, rows.padding, cols.padding)  # [N, 8, padded H, padded W]
    pooled = _pool_cells(maps, cols, -1, gaussian_window)  # [N, 8, padded H, cols * 4]
    pooled = _pool_cells(pooled, rows, -2, gaussian_window)  # [N, 8, rows * 4, cols * 4]
    # -> [N, rows, cols, cell row, cell col, bin]
    pooled = pooled.view(n, NUM_ORIENTATIONS, rows.count, NUM_CELLS, cols.count, NUM_CELLS)
    descriptors = pooled.permute(0, 2, 4, 3, 5, 1).reshape(n, rows.count, cols.count,
                                                           DESCRIPTOR_DIM)
    # F.normalize divides by max(norm, eps): a flat patch's zero vector stays zero, never NaN.
    descriptors = F.normalize(descriptors, dim=-1).clamp_(max=_CLIP)
    return F.normalize(descriptors, dim=-1)


def _orientation_maps(gray: torch.Tensor, row_padding: tuple[int, int],
                      col_padding: tuple[int, int]) -> torch.Tensor:
    """[N, 8, H, W] zero-padded by (top, bottom) rows and (left, right) columns: each pixel's
    gradient magnitude split linearly in the angle between the two orientation bins next to its
    gradient direction. The largest tensor of the descriptor is allocated padded rather than
    copied into a padded one."""
    padded = F.pad(gray[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    dx = padded[:, 1:-1, 2:] - padded[:, 1:-1, :-2]
    dy = padded[:, :-2, 1:-1] - padded[:, 2:, 1:-1]  # upwards, as OpenCV: angles counter-clockwise
    magnitude = torch.hypot(dx, dy)
    # atan2 is in [-pi, pi]: bins in units of 45 degrees, in [-4, 4]; a zero gradient gives
    # angle 0 and adds nothing.
    position = torch.atan2(dy, dx).mul_(NUM_ORIENTATIONS / (2 * math.pi))
    lower = position.floor()
    upper_weight = position.sub_(lower).mul_(magnitude)
    lower_weight = magnitude.sub_(upper_weight)
    # & 7 is the bin modulo 8 for negative bins too (two's complement), and far cheaper than
    # an integer remainder
    lower_bin = lower.long().bitwise_and_(NUM_ORIENTATIONS - 1)[:, None]
    upper_bin = (lower_bin + 1).bitwise_and_(NUM_ORIENTATIONS - 1)
    n, height, width = gray.shape
    maps = gray.new_zeros(n, NUM_ORIENTATIONS, sum(row_padding) + height,
                          sum(col_padding) + width)
    inside = maps[..., row_padding[0]:row_padding[0] + height,
                  col_padding[0]:col_padding[0] + width]
    inside.scatter_(1, lower_bin, lower_weight[:, None])
    inside.scatter_add_(1, upper_bin, upper_weight[:, None])
    return maps


@dataclass(frozen=True)
class _AxisGrid:
    """The patches along one image axis and the weights pooling them into cells.

    Patch ``j`` covers pixels ``[offset + j * stride, ... + patch_size)``; its cell ``c`` weighs
    the pixel centred at ``x`` by ``max(0, 1 - |x - centre_c| / cell)`` (times the Gaussian
    window), so the weights reach ``pad`` pixels past the patch on each side. The weights of
    ``chunk`` neighbouring patches over the ``span`` pixels they see form one kernel matrix,
    the same for every chunk: pooling is then a product with each chunk's pixel window.
    """

    length: int
    patch_size: int
    stride: int

    @property
    def count(self) -> int:
        return (self.length - self.patch_size) // self.stride + 1

    @property
    def offset(self) -> int:
        return (self.length - self.patch_size - (self.count - 1) * self.stride) // 2

    @property
    def cell(self) -> float:
        return self.patch_size / NUM_CELLS

    @property
    def pad(self) -> int:
        return math.ceil(self.cell / 2)

    @property
    def chunk(self) -> int:
        return min(self.count, _PATCHES_PER_CHUNK)

    @property
    def chunks(self) -> int:
        return -(-self.count // self.chunk)

    @property
    def span(self) -> int:
        return (self.chunk - 1) * self.stride + self.patch_size + 2 * self.pad

    @property
    def padding(self) -> tuple[int, int]:
        """Zeros (left, right) so that every chunk's window lies inside the padded axis."""
        needed = self.offset + (self.chunks - 1) * self.chunk * self.stride + self.span
        return self.pad, max(needed - self.pad - self.length, 0)

    def kernel(self, gaussian_window: bool, device: torch.device) -> torch.Tensor:
        """[span, chunk * 4]: column ``t * 4 + c`` pools cell c of the chunk's patch t."""
        # pixel centres, relative to the start of the chunk's first patch
        centres = torch.arange(self.span, device=device, dtype=torch.float32) + 0.5 - self.pad
        starts = torch.arange(self.chunk, device=device, dtype=torch.float32) * self.stride
        cells = (torch.arange(NUM_CELLS, device=device, dtype=torch.float32) + 0.5) * self.cell
        distance = centres[:, None, None] - starts[:, None] - cells  # [span, chunk, 4]
        weights = (1 - distance.abs() / self.cell).clamp(min=0)
        if gaussian_window:
            sigma = self.patch_size / 2
            from_middle = centres[:, None] - starts - self.patch_size / 2  # [span, chunk]
            weights = weights * torch.exp(-0.5 * (from_middle / sigma) ** 2)[..., None]
        return weights.reshape(self.span, self.chunk * NUM_CELLS)


def _pool_cells(padded: torch.Tensor, grid: _AxisGrid, dim: int, gaussian_window: bool
                ) -> torch.Tensor:
    """Cell sums along ``dim`` (-1: columns, -2: rows) of ``padded``, padded by
    ``grid.padding`` there: that axis becomes [count * 4], patch-major."""
    step = grid.chunk * grid.stride
    kernel = grid.kernel(gaussian_window, padded.device)  # [span, chunk * 4]
    start = padded.narrow(dim, grid.offset, padded.shape[dim] - grid.offset)
    windows = start.unfold(dim, grid.span, step)  # the chunks' pixels, as the last axis
    # One matrix product over all windows; matmul copies overlapping windows into rows, far
    # cheaper than the per-matrix loop it runs on such a view left as it is.
    if dim == -1:  # [..., chunks, span]
        pooled = (windows.reshape(-1, grid.span) @ kernel).view(*padded.shape[:-1], -1)
    else:  # [..., chunks, W, span]: multiply from the left, the rows stay contiguous
        pooled = (kernel.T @ windows.transpose(-1, -2)).flatten(-3, -2)
    return pooled.narrow(dim, 0, grid.count * NUM_CELLS)


def _image_size(image) -> tuple[int, int]:
    """(H, W) of a [C, H, W] tensor or an image file, without decoding the file."""
    if isinstance(image, torch.Tensor):
        return tuple(image.shape[-2:])
    from PIL import Image

    with Image.open(image) as opened:
        width, height = opened.size
    return height, width


class BagOfVisualWords:
    """Histograms of visual words: ``fit(images)`` learns a codebook of ``num_words`` dense SIFT
    descriptors (word ``FLAT_WORD`` the zero descriptor of flat patches, the others by k-means),
    ``transform(images)`` -> [N, num_words] float32 histograms.

    Images are a tensor [N, C, H, W], or a sequence whose items are [C, H, W] tensors of any
    sizes or image file paths (read at their own size, transparency over white); channels and
    dtypes as ``grayscale`` takes them. ``norm``: "l2" (unit length; the paper's "length-
    normalized") or "l1" (frequencies). ``device`` None: CUDA when available, else the CPU.
    Defaults: 16-pixel patches every 8 pixels, the classic dense grid for bags of words
    (Lazebnik et al., CVPR 2006), which gives 64 descriptors on a 72 x 72 demo image.

    Word 0 (``FLAT_WORD``) is fixed: the zero descriptor, the "flat" word of patches without
    gradient. k-means trains the other ``num_words - 1`` words. The descriptors k-means sees
    are a random sample drawn batch by batch, so the sample, hence the codebook, depends on
    ``seed`` and may change with ``fit``'s ``batch_size``.
    """

    def __init__(self, num_words: int = 1000, patch_size: int = 16, stride: int = 8,
                 norm: str = "l2", gaussian_window: bool = True,
                 device: str | torch.device | None = None, seed: int = 0):
        if not isinstance(num_words, int) or not 3 <= num_words <= 65536:
            raise ValueError(f"BagOfVisualWords: num_words must be an integer in [3, 65536], "
                             f"got {num_words!r}")
        _check_geometry(patch_size, stride)
        if norm not in NORMS:
            raise ValueError(f"BagOfVisualWords: norm must be one of {NORMS}, got {norm!r}")
        self.num_words, self.patch_size, self.stride = num_words, patch_size, stride
        self.norm, self.gaussian_window, self.seed = norm, gaussian_window, seed
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.codebook: torch.Tensor | None = None  # [num_words, 128] once fitted

    def __repr__(self) -> str:
        return (f"BagOfVisualWords(num_words={self.num_words}, patch_size={self.patch_size}, "
                f"stride={self.stride}, norm={self.norm!r}, fitted={self.codebook is not None})")

    @torch.no_grad()  # not inference_mode: the codebook must stay an ordinary tensor
    def fit(self, images, max_descriptors: int | None = None, iters: int = 25,
            init: str = "random", batch_size: int = 64,
            progress: bool = True) -> "BagOfVisualWords":
        """Train the codebook: word ``FLAT_WORD`` is the zero descriptor of flat patches, the
        other ``num_words - 1`` come from k-means (``iters`` iterations from ``init``, one of
        ``KMEANS_INITS`` as ``mmfast.quant.kmeans`` takes it, seeded) on at most
        ``max_descriptors`` descriptors of textured patches (default 100 per word), drawn
        evenly from every image with a generator seeded by ``seed``; returns self.

        Flat patches get a word of their own because k-means cannot place them: every unit
        descriptor is equally far (1) from the zero vector, so without an exact zero word
        they would go to whichever word has the lowest index, and zero vectors drawn as
        initial centroids stay duplicates that splitting cannot separate (0 * (1 + eps) = 0).
        """
        if max_descriptors is None:
            max_descriptors = 100 * self.num_words
        if not isinstance(max_descriptors, int) or max_descriptors < self.num_words:
            raise ValueError(f"fit: max_descriptors must be an integer >= num_words="
                             f"{self.num_words}, got {max_descriptors!r}")
        if init not in KMEANS_INITS:  # checked before the descriptors are computed
            raise ValueError(f"fit: init must be one of {KMEANS_INITS}, got {init!r}")
        groups = _size_groups(images, self.patch_size)
        if len(images) == 0:
            raise ValueError("fit: images must hold at least one image, got none")
        per_image = -(-max_descriptors // len(images))
        generator = torch.Generator().manual_seed(self.seed)
        samples = []
        for _, gray in self._batches(images, groups, batch_size, progress, "fit"):
            descriptors = self._descriptors(gray).flatten(1, 2)  # [B, patches, 128]
            textured = descriptors.any(-1)  # [B, patches]
            keys = torch.rand(descriptors.shape[:2], generator=generator).to(descriptors.device)
            keys[~textured] = 2  # after every random key in [0, 1): flat patches come last
            chosen = keys.argsort(1)[:, :per_image]  # [B, <= per_image]
            picked = descriptors.gather(1, chosen[..., None].expand(-1, -1, DESCRIPTOR_DIM))
            samples.append(picked[textured.gather(1, chosen)])
        samples = torch.cat(samples)
        if samples.shape[0] < self.num_words - 1:
            raise ValueError(f"fit: the images give {samples.shape[0]} descriptors of textured "
                             f"patches, fewer than the num_words - 1 = {self.num_words - 1} "
                             f"k-means words; pass more or larger images, a smaller stride or "
                             f"fewer words")
        k = self.num_words - 1
        centroids = kmeans(samples, k, iters=iters, seed=self.seed,
                           max_points_per_centroid=-(-max_descriptors // k), init=init)
        self.codebook = torch.cat([centroids.new_zeros(1, DESCRIPTOR_DIM), centroids])
        return self

    @torch.no_grad()  # not inference_mode: the histograms may feed a model that trains
    def transform(self, images, batch_size: int = 64, progress: bool = True) -> torch.Tensor:
        """Histograms [N, num_words] (float32, on the CPU) of the images' visual words, each
        descriptor counted once for its nearest word, normalized by ``norm``."""
        if self.codebook is None:
            raise RuntimeError("BagOfVisualWords is not fitted: call fit(images) or "
                               "BagOfVisualWords.load(directory) first")
        groups = _size_groups(images, self.patch_size)
        codebook = self.codebook.to(self.device)[None]  # [1, num_words, 128]
        histograms = torch.zeros(len(images), self.num_words)
        for indices, gray in self._batches(images, groups, batch_size, progress, "transform"):
            descriptors = self._descriptors(gray).reshape(-1, DESCRIPTOR_DIM)
            words = pq_encode(descriptors, codebook).view(len(indices), -1).long()
            words += torch.arange(len(indices), device=words.device)[:, None] * self.num_words
            counts = torch.bincount(words.flatten(), minlength=len(indices) * self.num_words)
            histograms[indices] = counts.view(len(indices), self.num_words).float().cpu()
        return F.normalize(histograms, p=1 if self.norm == "l1" else 2, dim=1)

    def _descriptors(self, gray: torch.Tensor) -> torch.Tensor:
        return _describe(gray, self.patch_size, self.stride, self.gaussian_window)

    def _batches(self, images, groups: dict, batch_size: int, progress: bool, stage: str
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(indices, intensity [B, H, W] on the device)`` over ``groups`` (image size ->
        indices), at most ``batch_size`` images and about _PIXELS_PER_BATCH pixels a batch."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"{stage}: batch_size must be an integer >= 1, got {batch_size!r}")
        with tqdm(total=len(images), desc=f"bag of visual words ({stage})", unit="img",
                  disable=not progress, leave=False) as bar:
            for (height, width), indices in groups.items():
                step = max(1, min(batch_size, _PIXELS_PER_BATCH // (height * width)))
                for start in range(0, len(indices), step):
                    chunk = indices[start:start + step]
                    if isinstance(images, torch.Tensor):  # one size: chunk is a range
                        first = int(chunk[0])
                        gray = _grayscale(images[first:int(chunk[-1]) + 1].to(self.device),
                                          lambda index: f"images[{first + index}]")
                    else:
                        gray = torch.cat([
                            _grayscale(self._load(images[i])[None],
                                       lambda _, i=int(i): _describe_item(images, i))
                            for i in chunk])
                    yield chunk, gray
                    bar.update(len(chunk))

    def _load(self, image) -> torch.Tensor:
        if not isinstance(image, torch.Tensor):
            image = load_image(image, None)
        return image.to(self.device)

    # ---- checkpoints: safetensors codebook + JSON config, written atomically
    def config(self) -> dict:
        return {"kind": "BagOfVisualWords", "num_words": self.num_words,
                "patch_size": self.patch_size, "stride": self.stride, "norm": self.norm,
                "gaussian_window": self.gaussian_window, "seed": self.seed}

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``codebook.safetensors`` into ``directory``. Each file is
        written atomically; an existing config.json is removed first and the new one written
        last, so a directory with a config.json holds a complete model, also after a crash
        while overwriting an earlier save."""
        if self.codebook is None:
            raise RuntimeError("BagOfVisualWords is not fitted: nothing to save")
        directory = Path(directory)
        (directory / _CONFIG).unlink(missing_ok=True)
        save_tensors_atomic(directory / _WEIGHTS, {"codebook": self.codebook})
        write_text_atomic(directory / _CONFIG, json.dumps(self.config(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike,
             device: str | torch.device | None = None) -> "BagOfVisualWords":
        """A model saved by ``save``; never unpickles anything."""
        directory = Path(directory)
        if not (directory / _CONFIG).is_file():
            raise FileNotFoundError(f"load: {directory} holds no saved BagOfVisualWords (no "
                                    f"{_CONFIG}: never saved, or its save did not finish)")
        config = json.loads((directory / _CONFIG).read_text())
        if config.pop("kind", None) != "BagOfVisualWords":
            raise ValueError(f"load: {directory / _CONFIG} is not a BagOfVisualWords config")
        model = cls(**config, device=device)
        codebook = load_file(str(directory / _WEIGHTS))["codebook"]
        if tuple(codebook.shape) != (model.num_words, DESCRIPTOR_DIM):
            raise ValueError(f"load: the codebook in {directory / _WEIGHTS} has shape "
                             f"{tuple(codebook.shape)}, the config expects "
                             f"{(model.num_words, DESCRIPTOR_DIM)}")
        model.codebook = codebook.float().to(model.device)
        return model


def _describe_item(images: Sequence, index: int) -> str:
    """``images[i]``, with the path when the item is a file: how errors name an image."""
    image = images[index]
    return f"images[{index}]" + ("" if isinstance(image, torch.Tensor) else f" ({image})")


def _size_groups(images, patch_size: int) -> dict[tuple[int, int], torch.Tensor]:
    """Image size (H, W) -> indices of the images of that size, after checking every image's
    type and shape and that it holds a patch (files: only their headers are read)."""
    if isinstance(images, torch.Tensor):
        _check_images("images", images)
        _check_size("images", tuple(images.shape[-2:]), patch_size)
        return {tuple(images.shape[-2:]): torch.arange(images.shape[0])}
    if not isinstance(images, Sequence) or isinstance(images, (str, bytes)):
        raise TypeError(f"images must be a tensor [N, C, H, W] or a sequence of [C, H, W] "
                        f"tensors or image paths, got {type(images).__name__}")
    groups = {}
    for index, image in enumerate(images):
        if isinstance(image, torch.Tensor):
            _check_images(f"images[{index}]", image, ndim=3)
        elif not isinstance(image, (str, os.PathLike)):
            raise TypeError(f"images[{index}] must be a [C, H, W] tensor or an image path, got "
                            f"{type(image).__name__}")
        size = _image_size(image)
        _check_size(_describe_item(images, index), size, patch_size)
        groups.setdefault(size, []).append(index)
    return {size: torch.tensor(indices) for size, indices in sorted(groups.items())}


def _check_size(name: str, size: tuple[int, int], patch_size: int) -> None:
    if size[0] < patch_size or size[1] < patch_size:
        raise ValueError(f"{name} must be at least patch_size={patch_size} pixels on each side, "
                         f"got {size[0]} x {size[1]}")


def _check_geometry(patch_size, stride) -> None:
    if not isinstance(patch_size, int) or patch_size < NUM_CELLS:
        raise ValueError(f"patch_size must be an integer >= {NUM_CELLS} (one pixel per cell), "
                         f"got {patch_size!r}")
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be an integer >= 1, got {stride!r}")


def _check_images(name: str, images, ndim: int = 4) -> None:
    layout = "[N, C, H, W]" if ndim == 4 else "[C, H, W]"
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(images).__name__}")
    if images.dim() != ndim:
        raise ValueError(f"{name} must have shape {layout}, got {tuple(images.shape)}")
    if not 1 <= images.shape[-3] <= 4:
        raise ValueError(f"{name} must have 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA) "
                         f"channels, got {images.shape[-3]} in shape {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise TypeError(f"{name} must be uint8 or floating, got {images.dtype}")
