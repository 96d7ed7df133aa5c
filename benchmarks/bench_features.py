"""Images -> features: ``ImageFeatureExtractor.extract`` against a plain PIL + torchvision loop
with the same backbone and weights (EfficientNet-Lite0, 96 px), on 2 threads.

    .venv/bin/python -m pytest benchmarks/bench_features.py -s

Two sets: the demo's 72-px emoji PNGs (256 of them), and 48 PNGs of about one megapixel
(1024 x 1024 RGBA, seeded: an emoji scaled up over a smooth gradient with noise, so they
compress like photographs do, about 2 MB each; cached under ``~/.cache/mmfast``). The plain
loop decodes each image at full size, composites its alpha over white, resizes with
torchvision's ``Resize`` and runs the backbone on contiguous (NCHW) batches; mmfast reduces large
images before compositing, decodes the next batch on threads while the backbone runs, and runs
the backbone in its inference form (``inference_form``: batch norms folded, padding inside the
convolutions, activations in place) channels-last, eager or through ``torch.compile``
(``features --compile``), and in bfloat16 (``features --precision bf16``). Each must give the
plain loop's features (cosine >= 0.999, checked here; bf16 >= 0.99). The plain loop runs once
more on mmfast's inference form of the network, to show what the loop alone adds.
The last tests print img/s and the shares of decode and backbone in a one-after-the-other run.
"""

import copy
import time

import numpy as np
import pytest
import torch

from mmfast._io import cache_dir
from mmfast.data import emoji_dataset, read_manifest
from mmfast.features.image import ImageFeatureExtractor, build_backbone, load_image

SIZE, BATCH, THREADS = 96, 64, 2  # THREADS: the two_threads fixture's count
_FIGURES: dict[str, str] = {}


def _emoji_paths() -> list[str]:
    return [record.image for record in read_manifest(emoji_dataset("group").train)[:256]]


def _megapixel_paths() -> list[str]:
    from PIL import Image

    directory = cache_dir() / "bench-images-1mp-v1"
    paths = [directory / f"image{n:02d}.png" for n in range(48)]
    if all(path.exists() for path in paths):
        return [str(path) for path in paths]
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    emoji = _emoji_paths()
    ramp = np.linspace(0, 1, 1024, dtype=np.float32)
    for n, path in enumerate(paths):
        colors = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        background = ramp[:, None, None] * colors[0] + (1 - ramp[None, :, None]) * colors[1]
        background += rng.normal(0, 6, background.shape).astype(np.float32)
        image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8)).convert("RGBA")
        with Image.open(emoji[n]) as glyph:
            glyph = glyph.convert("RGBA").resize((768, 768), Image.Resampling.BICUBIC)
        image.alpha_composite(glyph, (128, 128))
        image.save(path)
    return [str(path) for path in paths]


SETS = {"emoji 72 px": _emoji_paths, "PNG 1 Mpixel": _megapixel_paths}


@pytest.fixture(scope="module")
def extractor():
    return ImageFeatureExtractor(image_size=SIZE, batch_size=BATCH, decode_threads=THREADS)


@pytest.fixture(scope="module")
def package_trunk():
    """The network as its package builds it (EfficientNet-Lite0 with the packaged weights)."""
    return build_backbone("efficientnet_lite0")[0].eval()


def _plain_loop(extractor: ImageFeatureExtractor, trunk: torch.nn.Module,
                paths: list[str]) -> np.ndarray:
    """What a user writes with PIL and torchvision: decode, composite, resize, normalize, and
    ``trunk`` on contiguous batches."""
    from PIL import Image
    from torchvision import transforms

    mean, std = extractor.mean.flatten().tolist(), extractor.std.flatten().tolist()
    transform = transforms.Compose([
        transforms.Resize((SIZE, SIZE)), transforms.ToTensor(), transforms.Normalize(mean, std)])
    out = []
    with torch.inference_mode():
        for start in range(0, len(paths), BATCH):
            batch = []
            for path in paths[start:start + BATCH]:
                with Image.open(path) as image:
                    canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
                    canvas.alpha_composite(image.convert("RGBA"))
                    batch.append(transform(canvas.convert("RGB")))
            out.append(torch.nn.functional.normalize(trunk(torch.stack(batch)), dim=1))
    return torch.cat(out).numpy()


@pytest.fixture(scope="module")
def variants(extractor):
    """mmfast's extractor as ``features`` runs it by default, with ``--compile``, and with
    ``--precision bf16``, and the least cosine each must keep to the plain loop's features."""
    return {"mmfast": (extractor, 0.999),
            "mmfast compiled": (ImageFeatureExtractor(image_size=SIZE, batch_size=BATCH,
                                                      decode_threads=THREADS, compile=True),
                                0.999),
            "mmfast bf16": (ImageFeatureExtractor(image_size=SIZE, batch_size=BATCH,
                                                  decode_threads=THREADS, precision="bf16"),
                            0.99)}


@pytest.mark.parametrize("impl", ["mmfast", "mmfast compiled", "mmfast bf16"])
@pytest.mark.parametrize("name", SETS)
def test_extract(benchmark, record, two_threads, extractor, variants, package_trunk, name,
                 impl):
    """mmfast's extractor; with ``compile=True`` the warm-up round compiles, so the timed
    rounds show what a long job gets. bf16 changes the features (cosine 0.993-0.9995 on the
    emoji), so it is held to a looser bound and printed."""
    paths = SETS[name]()
    seconds = []
    variant, bound = variants[impl]

    def extract():
        start = time.perf_counter()
        features = variant.extract(paths, False)[0]
        seconds.append(time.perf_counter() - start)
        return features

    features = benchmark.pedantic(extract, rounds=3, warmup_rounds=1)
    record(benchmark, f"features {name}", impl)
    plain = _plain_loop(extractor, package_trunk, paths)
    cosine = (features * plain).sum(1)
    _FIGURES[f"{name} {impl}"] = (f"{len(paths) / min(seconds):.0f} img/s (least cosine to the "
                                  f"plain loop {cosine.min():.4f})")
    assert cosine.min() >= bound, f"features differ from the plain loop's: cosine {cosine.min()}"


@pytest.mark.parametrize("trunk", ["package", "mmfast"])
@pytest.mark.parametrize("name", SETS)
def test_plain_pil_torchvision(benchmark, record, two_threads, extractor, package_trunk, name,
                               trunk):
    """The plain loop, running the network as its package builds it (the peer), and as
    mmfast's extractor runs it (``inference_form``): the second shows what the loop itself
    (overlapped, reduced decoding, channels-last) adds."""
    paths = SETS[name]()
    network = package_trunk if trunk == "package" else copy.deepcopy(extractor.trunk).to(
        memory_format=torch.contiguous_format)
    benchmark.pedantic(lambda: _plain_loop(extractor, network, paths), rounds=3, warmup_rounds=1)
    impl = "PIL + torchvision loop" + ("" if trunk == "package" else ", mmfast's trunk")
    record(benchmark, f"features {name}", impl)


@pytest.mark.parametrize("name", SETS)
def test_where_the_time_goes(two_threads, extractor, name):
    """Decode (one thread) and backbone, one after the other, best of three."""
    paths = SETS[name]()
    decode = backbone = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        images = [load_image(path, SIZE) for path in paths]
        decode = min(decode, time.perf_counter() - start)
        start = time.perf_counter()
        for first in range(0, len(images), BATCH):
            extractor.features(torch.stack(images[first:first + BATCH]))
        backbone = min(backbone, time.perf_counter() - start)
    share = decode / (decode + backbone)
    ran = ", ".join(f"{impl} {figure}" for impl, figure in _FIGURES.items()
                    if impl.startswith(name))
    print(f"\n{ran or name}; decode {len(paths) / decode:.0f} "
          f"img/s on one thread, backbone {len(paths) / backbone:.0f} img/s: decode is "
          f"{share:.0%} of a serial run")

