"""Paper 002 (joint and cross-modal autoencoders) on the embedded emoji data.

    .venv/bin/python -m pytest benchmarks/bench_autoencoders.py --benchmark-enable -s

Paper 002's Table 2 (``test_table2_on_emoji_tags``): the demo's multi-label ``tags`` task, visual
words of every image (codebook fitted on the train split), the seven feature representations of
``mmfast.experiments.autoencoder_demo`` scored by per-concept logistic regressions, mean
held-out AUC over the 10 most frequent tags, printed beside the paper's NUS-WIDE figures.

Bag-of-visual-words extraction throughput (``test_bovw_throughput_*``): 256 demo images (72 x 72,
gray in [0, 1], the same input for everyone), 16-pixel patches every 8 pixels (64 descriptors an
image), a 1000-word codebook, 1 and 2 threads. mmfast's batched ``BagOfVisualWords.transform``
against the outside libraries used as a user would, one image at a time: kornia's
``DenseSIFTDescriptor`` and OpenCV's SIFT ``compute`` on grid keypoints, each followed by the
same batched assignment as mmfast's (one ``pq_encode`` of all descriptors against the same
codebook, counts, l2 normalization), so that the histogram groups compare the descriptors. The
descriptor alone too, where kornia also runs batched. Only time is compared here; how close the
descriptors are is tested in tests/test_bovw.py.
"""


import pytest
import torch
from torch.nn import functional as F

from mmfast.data import emoji_dataset, read_manifest
from mmfast.features import BagOfVisualWords, dense_sift, load_image
from mmfast.features.bovw import grayscale
from mmfast.ops import pq_encode
from mmfast.experiments.autoencoder_demo import ROWS, run

BOVW_IMAGES = 256
BOVW_BATCH = 64
PATCH, STRIDE = 16, 8
ROUNDS = {"rounds": 3, "warmup_rounds": 1}  # the warm-up round starts the thread pools


@pytest.fixture(scope="module")
def bovw_images() -> torch.Tensor:
    """[256, 1, 72, 72] float gray, transparency over white."""
    records = read_manifest(emoji_dataset("group").train)[:BOVW_IMAGES]
    rgb = torch.stack([load_image(record.image, None) for record in records])
    return grayscale(rgb)[:, None]


@pytest.fixture(scope="module")
def bovw_model(bovw_images) -> BagOfVisualWords:
    return BagOfVisualWords(1000, PATCH, STRIDE, device="cpu").fit(bovw_images, iters=10,
                                                                  progress=False)


@pytest.fixture
def bovw_threads(threads):
    """The shared thread fixture, applied to OpenCV's pool too when OpenCV is installed (without
    it only the OpenCV cases skip)."""
    try:
        import cv2
    except ImportError:
        yield threads
        return
    previous = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    yield threads
    cv2.setNumThreads(previous)


def _histograms(descriptors: list, codebook: torch.Tensor) -> torch.Tensor:
    """l2-normalized word counts [images, words] from each image's descriptors [patches, 128],
    all assigned at once, as ``BagOfVisualWords.transform`` does."""
    stacked = torch.stack(descriptors)  # [images, patches, 128]
    images, words_count = stacked.shape[0], codebook.shape[0]
    words = pq_encode(stacked.flatten(0, 1).contiguous(), codebook[None]).view(images, -1).long()
    words += torch.arange(images)[:, None] * words_count
    counts = torch.bincount(words.flatten(), minlength=images * words_count)
    return F.normalize(counts.view(images, words_count).float(), dim=1)


def _kornia_sift():
    kornia = pytest.importorskip("kornia")
    # 4 x 4 cells of 4 pixels, one descriptor every 8 pixels, plain SIFT (not RootSIFT)
    return kornia.feature.DenseSIFTDescriptor(spatial_bin_size=PATCH // 4, rootsift=False,
                                              stride=STRIDE, padding=0)


def _opencv_sift(size: int):
    """``describe(gray uint8 [H, W]) -> [patches, 128]``: OpenCV SIFT at keypoints centred on
    our grid, scaled so a histogram cell is PATCH / 4 pixels wide (OpenCV's cell is 1.5 * size)."""
    cv2 = pytest.importorskip("cv2")
    sift = cv2.SIFT_create()
    starts = range(0, size - PATCH + 1, STRIDE)
    keypoints = [cv2.KeyPoint(left + PATCH / 2, top + PATCH / 2, PATCH / 6)
                 for top in starts for left in starts]

    def describe(gray):
        _, descriptors = sift.compute(gray, keypoints)
        return torch.from_numpy(descriptors)

    return describe


def _per_image(images, describe) -> list:
    """The plain loop a user writes: each image's descriptors [patches, 128], one at a time."""
    return [describe(image) for image in images]


def _peer(impl: str, images: torch.Tensor):
    """``(inputs, describe)`` of a per-image peer: its own input type, [patches, 128] out."""
    if impl == "kornia":
        sift = _kornia_sift()

        def describe(image):
            return sift(image[None])[0].flatten(1).T  # [128, rows, cols] -> [patches, 128]

        return images, describe
    as_bytes = (images[:, 0] * 255).round().to(torch.uint8).numpy()
    return as_bytes, _opencv_sift(images.shape[-1])


def _throughput(benchmark) -> None:
    if benchmark.stats is not None:  # None under --benchmark-disable (a plain test run)
        benchmark.extra_info["images_per_s"] = BOVW_IMAGES / benchmark.stats.stats.min


@pytest.mark.parametrize("impl", ["mmfast", "kornia", "opencv"])
def test_bovw_throughput_histograms(benchmark, record, bovw_images, bovw_model, bovw_threads,
                                    impl):
    record(benchmark, f"BoVW histograms 72x72 {bovw_threads}thr", impl)
    codebook = bovw_model.codebook
    with torch.inference_mode():
        if impl == "mmfast":
            histograms = benchmark.pedantic(
                bovw_model.transform, (bovw_images,),
                kwargs={"batch_size": BOVW_BATCH, "progress": False}, **ROUNDS)
        else:
            inputs, describe = _peer(impl, bovw_images)
            histograms = benchmark.pedantic(
                lambda: _histograms(_per_image(inputs, describe), codebook), **ROUNDS)
    _throughput(benchmark)
    assert histograms.shape == (BOVW_IMAGES, 1000)
    torch.testing.assert_close(histograms.norm(dim=1), torch.ones(BOVW_IMAGES))


@pytest.mark.parametrize("impl", ["mmfast", "kornia batched", "kornia", "opencv"])
def test_bovw_throughput_descriptors(benchmark, record, bovw_images, bovw_threads, impl):
    record(benchmark, f"dense SIFT 72x72 {bovw_threads}thr", impl)

    def in_batches(describe):
        return [describe(bovw_images[start:start + BOVW_BATCH])
                for start in range(0, BOVW_IMAGES, BOVW_BATCH)]

    with torch.inference_mode():
        if impl == "mmfast":
            benchmark.pedantic(in_batches, (lambda batch: dense_sift(batch, PATCH, STRIDE),),
                               **ROUNDS)
        elif impl == "kornia batched":
            benchmark.pedantic(in_batches, (_kornia_sift(),), **ROUNDS)
        else:
            inputs, describe = _peer(impl, bovw_images)
            benchmark.pedantic(_per_image, (inputs, describe), **ROUNDS)
    _throughput(benchmark)


# ---- paper 002's Table 2 on the demo's multi-label tags task

def test_table2_on_emoji_tags(one_thread):
    """Visual words of every demo image (the codebook fitted on the train split's images), then
    ``autoencoder_demo.table2``: per-concept logistic regressions on each representation, mean
    held-out AUC over the 10 most frequent tags, beside the paper's figures."""
    table = run(1000, PATCH, STRIDE)
    print("one thread")
    # Noise would sit at 0.5: every representation must carry signal about the concepts.
    assert all(table.auc[row].mean > 0.55 for row in ROWS)
