"""The names and default recipes of ``mmfast train``'s models, without torch: the command
builds its parser (help texts with every default), answers ``--help``/``--version`` and refuses
bad arguments from this module alone, in a fraction of the 1.5 s that importing torch takes.
"""

import dataclasses
import math
from dataclasses import dataclass

# The models of `mmfast train --model` (text: FastText; pq/rspq: DiscretizedFastText; mlp: the
# early-fusion baseline EarlyFusionMLP; the rest: ContinuousFusion)
PAPER_MODELS = ("text", "continuous", "additive", "max", "gated", "bilinear", "bilinear_gated",
                "pq", "rspq")
MODELS = PAPER_MODELS + ("mlp",)
DEMO_IMAGE_SIZE = 96  # the emoji are 72x72: a larger input adds time, not detail
DEMO_PAPERS = ("003", "000", "002", "004")  # mmfast demo --paper all runs them in this order
REGION_IMAGE_SIZE = 128  # grid regions: a 4 x 4 grid of cells (EfficientNet's stride is 32)
GATED_MODELS = ("gated", "bilinear_gated")
FASTTEXT_MODELS = ("text", "pq", "rspq")  # trained as fastText is: Hogwild SGD on the CPU
# ContinuousFusion's gating modality; a recipe's "auto" trains both and keeps the one that
# validates better.
GATES = ("text", "image")
RECIPE_GATES = (*GATES, "auto")
OPTIMIZERS = ("sgd", "adam")  # of the minibatch trainer, mmfast.train.fasttext.train
# What a recipe's text_lr_scale "auto" tries, keeping the better on validation (see bilinear's
# default below)
TEXT_LR_SCALES = (1.0, 5.0)
PACKAGED = "packaged"  # weights= value: the weights a pip package ships (efficientnet_lite0)
# The image backbone's number formats: bf16 runs it in bfloat16 (features --precision)
IMAGE_PRECISIONS = ("fp32", "bf16")


@dataclass
class Recipe:
    """Hyperparameters (paper 003's grid: lr 0.1-2, epochs 5-20, dim 20/100, alpha 0.01-0.5)."""

    model: str = "additive"
    dim: int = 20
    epochs: int = 20
    lr: float = 0.5
    batch_size: int = 16
    gate: str = "text"
    alpha: float = 0.5
    ngrams: int = 1
    buckets: int = 100_000
    subvectors: int = 8
    centroids: int = 64
    repetitions: int = 4
    patience: int | None = None
    # the last epoch to train (None: epochs), the lr schedule still planned over epochs:
    # what a refit sets, to stop where validation kept the selection run
    stop_epoch: int | None = None
    weight_decay: float = 0.0
    # the sparse text embedding table's learning rate, a multiple of lr, for the models trained
    # by minibatches; "auto" trains at each of TEXT_LR_SCALES and keeps the better on validation
    text_lr_scale: float | str = 1.0
    optimizer: str = "sgd"
    dropout: float = 0.0
    # under torchrun, examples of a rank's share between merges of the ranks' updates (None:
    # 8 an epoch); the Hogwild-trained text, pq and rspq models
    average_every: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.gate not in RECIPE_GATES:
            raise ValueError(f"gate must be one of {RECIPE_GATES}, got {self.gate!r}")
        if self.text_lr_scale != "auto" and not (
                isinstance(self.text_lr_scale, (int, float)) and 0 < self.text_lr_scale < math.inf):
            raise ValueError(f"text_lr_scale must be a finite number > 0 or 'auto', got "
                             f"{self.text_lr_scale!r}")

    @classmethod
    def default(cls, model: str, multilabel: bool = False, num_labels: int | None = None,
                **overrides) -> "Recipe":
        """``model``'s default recipe for a single-label or ``multilabel`` task of
        ``num_labels`` classes (``DEFAULT_RECIPES``, then ``MULTILABEL_RECIPES``, then, when
        the count is given, ``single_label_lr``'s learning rate, ``WEIGHT_DECAY_PER_CLASS``'s
        penalty and ``MANY_LABEL_RECIPES``) with ``overrides`` on top."""
        kind = dict(MULTILABEL_RECIPES.get(model, {})) if multilabel else {}
        if num_labels is not None:
            if model in SINGLE_LABEL_LR and not multilabel:
                kind["lr"] = single_label_lr(model, num_labels)
            if model in WEIGHT_DECAY_PER_CLASS:
                kind["weight_decay"] = WEIGHT_DECAY_PER_CLASS[model] / num_labels
            if num_labels >= MANY_LABELS:
                kind.update(MANY_LABEL_RECIPES.get(model, {}))
        return cls(**{"model": model, **DEFAULT_RECIPES.get(model, {}), **kind, **overrides})


# Models whose single-label learning rate follows the class count K: scale * sqrt(K) within
# [low, high]. Each class's output row learns only from its own items, so with many small classes
# it needs a larger step, and with few large ones a smaller step overfits less.
# The text model (held-out, three seeds, 40 epochs): subgroup (99 classes) 0.357 at lr 0.4, 0.375
# at 0.8, 0.435 at 1.2; group (9) 0.587 / 0.580 / 0.581; oxygen icons (10) 0.782 / 0.788 / 0.752;
# Adwaita icons (11) 0.869 / 0.841 / 0.824. More epochs at lr 0.4 did not replace the larger step
# on subgroup (0.362 at 100 epochs). Measured again after the SGD kernel's changes, six seeds on
# subgroup: 0.406 at 1.2 (one seed 0.341), 0.439 at 1.3, 0.435 at 1.4, and 2.0 diverges (0.13-
# 0.16): the ceiling is 1.3, short of the cliff. With the validation split keyed by file and the
# one-item tie of the kept epoch, the floor moved to 0.7 and the epochs to 80 (held-out, three
# seeds, lr 0.4 at 40 epochs -> 0.7 at 80): oxygen icons 0.817 -> 0.859 (autotune's recipe,
# lr 0.73 at dim 200, 0.860), Adwaita icons 0.863 -> 0.865, group 0.595 -> 0.593; subgroup's
# 1.29 at 80 epochs 0.445 -> 0.452. On two sets not used to choose it, the same way: oxygen's 22 px
# icons 0.835 -> 0.832, Adwaita's icons on the split keyed by file 0.850 -> 0.858.
# Bilinear (dim 50, three seeds): subgroup 0.536 at lr 0.2, 0.550 at 0.5 (autotune's recipe,
# lr 0.73 at dim 100, 0.566); group 0.728 at 0.2, 0.729 at 0.4; oxygen icons 0.848 at 0.2, 0.827
# at 0.4. On the multi-label tags, whose one-vs-all loss sums a gradient per label, 0.3 diverges:
# it keeps 0.2 there.
SINGLE_LABEL_LR = {"text": (0.13, 0.7, 1.3), "bilinear": (0.05, 0.2, 0.5)}


# Over the recipes above on tasks of MANY_LABELS labels or more. Bilinear's one product of two
# dim-wide vectors carries every class: at dim 50 it is too narrow for a hundred (held-out,
# three seeds, dim 50 -> 100: subgroup (99 classes) 0.553 -> 0.563, and 0.575 at 80 epochs;
# tags mAP (113, 80 epochs) 0.514 -> 0.534), while on ten it overfits (group 0.729 -> 0.720,
# oxygen icons 0.848 -> 0.833).
# RSPQ's image tokens weigh more there: the demo's two many-label tasks, held-out, six seeds,
# alpha 2 at 30 epochs -> alpha 3 at 60: subgroup 0.553 -> 0.568, tags mAP 0.499 -> 0.526
# (autotune's recipes, 60 s: 0.588 and 0.540). Alpha 4 is near a cliff on the tags (at 100
# epochs three seeds of three kept epoch 4-9 and held out 0.446), and on ten classes the weight
# is the data's: alpha 4 gained on the emoji groups and the oxygen icons and cost the Adwaita
# icons 6 points (0.868 -> 0.807), whose names carry the label.
MANY_LABELS = 50
MANY_LABEL_RECIPES = {"bilinear": {"dim": 100, "epochs": 80}, "rspq": {"epochs": 60, "alpha": 3.0}}

# Models whose L2 penalty is c / K for K labels. A class's output row learns from its own items
# alone, about 1/K of them, so a penalty fixed for every task holds many-class rows at zero while
# it is weak on a few classes. Image-only (held-out, three seeds, c = 0.03 against no penalty):
# oxygen icons (10 classes) 0.652 -> 0.673, group (9) 0.715 -> 0.720, subgroup (99) 0.544 ->
# 0.547, tags mAP (113) 0.523 -> 0.532; a fixed 3e-3 took subgroup to 0.481 and tags to 0.485.
# The additive fusion lost a point on the icons at 3e-3 (0.870 -> 0.860): it keeps none.
WEIGHT_DECAY_PER_CLASS = {"continuous": 0.03}


def single_label_lr(model: str, num_labels: int) -> float:
    """``model``'s learning rate on a single-label task of ``num_labels`` classes
    (``SINGLE_LABEL_LR``): 1.29 for the text model on the demo's 99 subgroups, 0.7 on 9 groups;
    0.5 and 0.2 for bilinear."""
    scale, low, high = SINGLE_LABEL_LR[model]
    return min(high, max(low, scale * num_labels ** 0.5))


# Per-model settings over the Recipe defaults: what `mmfast train --model X` and the demo use with
# no flags. Chosen on held-out data of the emoji group, subgroup and tags tasks and the oxygen icon
# set (benchmarks/bench_kiela.py prints them beside the autotuned recipes): the fastText-trained
# models want dim 50 and 30 epochs at lr 0.4 (the single-label text model 80 epochs, its lr by
# SINGLE_LABEL_LR), PQ's image tokens at alpha 1 and RSPQ's at 2 (held-out group/subgroup/tags
# mAP/icons, two seeds: rspq 0.692/0.499/0.456/0.813 at alpha 1, 0.746/0.551/0.518/0.867 at 2, alpha
# 8 diverged; pq's were best at 1; rspq's 3 on many labels: MANY_LABEL_RECIPES); the autograd
# fusions lr 3 on minibatches of 32 (a minibatch step averages 32 per-example gradients; with the
# image vectors centered, lr 1 -> 3 took additive from 0.763/0.557/0.542/0.850 to
# 0.780/0.583/0.581/0.873 on group/subgroup/tags/icons), except max on single-label tasks (lr 8,
# below) and the bilinear forms, whose gradient grows with |U x_t| |V x_v|: bilinear-gated
# diverged on tags at lr 1 and trains at 0.5; bilinear, with its input offsets, at dim 50 and
# lr 0.2 (more on many classes: SINGLE_LABEL_LR, MANY_LABEL_RECIPES; its text table faster:
# text_lr_scale, below).
# Which modality should gate is the data's: the emoji's weak texts gate the images (held-out gated:
# group 0.715 with the text gate, 0.594 with the image gate), the icons' strong names are gated by
# the image (0.697 against 0.770), so the gated models' default "auto" trains both and keeps the
# better on validation.
# The text model wants a higher lr on single-label tasks of many classes (SINGLE_LABEL_LR: 1.29 on
# subgroup's 99, 0.7 on the icons' 10); the image tokens of pq and rspq lose 1-4 points at lr
# 1.2 on every task. Its one-vs-all multi-label loss sums a gradient per label
# into the hidden vector, and lr 0.8 diverged on tags: there it keeps 0.4 (MULTILABEL_RECIPES).
# The sum/max/gate fusions and image-only want dim 200 over 100 (held-out, two seeds, group/
# subgroup/tags mAP: continuous 0.698/0.543/0.519 -> 0.720/0.546/0.515, additive 0.754/0.578/
# 0.563 -> 0.772/0.586/0.579, max subgroup/tags 0.566/0.555 -> 0.581/0.586, gated 0.530/0.467 ->
# 0.530/0.497), as autotune chose on its own; bilinear-gated, whose W is dim x dim per class,
# stays at 100.
# Word n-grams stay at 1 (fastText's default) on single-label tasks: on short texts a bigram is
# nearly unique to its item, so it adds memorization there (held-out, five seeds, the text model
# with bigrams: subgroup 0.440 -> 0.337, group 0.591 -> 0.573, icons 0.798 -> 0.797). The
# multi-label text model reads bigrams (MULTILABEL_RECIPES): a tag follows a phrase more than a
# word (tags mAP 0.340 -> 0.355, five seeds; fastText -loss ova's defaults 0.341). It costs P@1
# (one run: 0.519 -> 0.462): more of a tag's items rank high, a wrong tag comes first more often.
_FASTTEXT = {"dim": 50, "epochs": 30, "lr": 0.4}
_AUTOGRAD = {"dim": 200, "epochs": 40, "lr": 3.0, "batch_size": 32}
DEFAULT_RECIPES = {
    "text": {**_FASTTEXT, "epochs": 80},  # single-label: SINGLE_LABEL_LR by the label count
    "pq": {**_FASTTEXT, "alpha": 1.0}, "rspq": {**_FASTTEXT, "alpha": 2.0},
    "continuous": _AUTOGRAD, "additive": _AUTOGRAD,
    # max passes each unit's gradient to one modality, the larger: a step 8/3 the others' (held-
    # out, three seeds, lr 3 -> 8: group 0.776 -> 0.788, subgroup 0.550 -> 0.582, oxygen icons
    # 0.884 -> 0.886, Adwaita icons 0.812 -> 0.833). Single-label runs held at lr 12; the
    # multi-label tags collapse at 10 (mAP 0.570 at 3, 0.594 at 8, 0.197 at 10), so multi-label
    # keeps 3 (MULTILABEL_RECIPES), clear of that cliff.
    "max": {**_AUTOGRAD, "lr": 8.0},
    # gated's product scales the gradient of the gated side by the gate's sigmoid (1/2 at the
    # start) and that of the gating side by the sigmoid's slope (at most 1/4): its steps are
    # smaller than additive's at one lr (held-out, three seeds, lr 3 -> 8: subgroup 0.519 ->
    # 0.539, tags mAP 0.520 -> 0.535, oxygen icons 0.794 -> 0.801, their 32 px set 0.807 ->
    # 0.829, Adwaita icons 0.779 -> 0.853; group 0.711 -> 0.709 and oxygen's 22 px icons 0.841
    # -> 0.837, within a seed's spread).
    "gated": {**_AUTOGRAD, "lr": 8.0, "gate": "auto"},
    # Bilinear's lr is held low by its form's gradient (|U x_t| |V x_v|), and at that lr its
    # text table (the fusions' sparse one, stepped each time a word is in a batch) learns too
    # slowly where the names carry the label: on the Adwaita icons (text-only 0.858) it held out
    # 0.690, image-only's level. At 5x lr the text table took it to 0.868, group 0.707 -> 0.773,
    # tags mAP 0.523 -> 0.548, subgroup 0.552 -> 0.559, but the oxygen icons fell 0.869 -> 0.811
    # (2x: 0.840) and their 22 px set 0.841 -> 0.833 (held-out, three seeds). No one rate serves
    # both kinds of set; validation tells them apart (it chose 5x on Adwaita, group and tags at
    # every seed, 1x on both oxygen sets), so "auto" trains both (TEXT_LR_SCALES).
    "bilinear": {**_AUTOGRAD, "dim": 50, "lr": 0.2,  # single-label: SINGLE_LABEL_LR
                 "text_lr_scale": "auto"},
    "bilinear_gated": {**_AUTOGRAD, "dim": 100, "lr": 0.5, "gate": "auto"},
    # a hidden layer of 1024 trained by AdamW, dropout 0.5 on its input and output: held-out
    # (10% of the training split validates), two seeds, group 0.804, subgroup 0.630, tags mAP
    # 0.648, icons 0.850, against logistic regression's 0.793, 0.624, 0.634, 0.853. Weight
    # decay 0.01 -> 0.05 took tags from 0.639 to 0.648 and icons from 0.842 to 0.850; 0.1 and
    # dropout 0.6 were no better.
    "mlp": {"dim": 1024, "epochs": 60, "lr": 3e-3, "batch_size": 32, "optimizer": "adam",
            "dropout": 0.5, "weight_decay": 0.05},
}
# Over DEFAULT_RECIPES on multi-label tasks. A tag's one-vs-all classifier sees its few
# positives a few times an epoch, so the autograd fusions train twice the epochs there (tags mAP,
# held-out, seeds 0/1, 40 -> 80 epochs: gated 0.481/0.484 -> 0.525/0.531, continuous
# 0.512/0.467 -> 0.520/0.519, max 0.547/0.563 -> 0.565/0.574, bilinear 0.508/0.507 ->
# 0.515/0.524, bilinear-gated 0.543/0.514 -> 0.554/0.554, additive 0.574/0.574 ->
# 0.573/0.575); the best epoch keeps what the extra ones would overfit.
MULTILABEL_RECIPES = {"text": {**_FASTTEXT, "ngrams": 2},
                      **{model: {"epochs": 80} for model in ("continuous", "additive", "gated",
                                                             "bilinear", "bilinear_gated")},
                      "max": {"epochs": 80, "lr": _AUTOGRAD["lr"]}}


# Text as one vector per item (mmfast.features.text_features): the systems other than paper
# 003's read their text this way.
TEXT_FEATURES = ("auto", "hashed", "word2vec", "glove", "glove:PATH", "sentence:PATH")
# What "auto" tries, keeping the one that validates better: neither wins on every data set.
# Held-out accuracy, hashed -> word2vec (the validation split chose the better in all four):
# emoji group cacnet 0.651 -> 0.755, joint_ae 0.610 -> 0.683 (Word2Vec carries word
# similarity to held-out names); Adwaita icons cacnet 0.800 -> 0.641, joint_ae 0.794 -> 0.671
# (~750 short icon names train poor vectors).
AUTO_TEXT_FEATURES = ("hashed", "word2vec")


def is_text_features(kind: str, auto: bool = True) -> bool:
    """Whether ``kind`` names text features (``TEXT_FEATURES``, a PATH filled in; "auto" only
    with ``auto``)."""
    name, colon, path = kind.partition(":")
    if name in ("hashed", "word2vec") or (name == "auto" and auto):
        return not colon
    return (name == "glove" and not (colon and not path)) or (name == "sentence" and bool(path))


class _TaskFreeRecipe:
    """A recipe whose defaults are the same for single- and multi-label tasks: ``default``
    (``Recipe.default``'s signature, as the registry calls it) sets only ``model``."""

    @classmethod
    def default(cls, model: str, multilabel: bool = False, num_labels: int | None = None,
                **overrides):
        return cls(model=model, **overrides)


@dataclass
class CACNetRecipe(_TaskFreeRecipe):
    """Paper 000's CACNet (DESIGN 3.2) on the store's image features, reduced by PCA to
    ``image_dim``, and ``text_features`` of width ``text_dim``, each standardized; ``dim`` hidden
    units (half per modality), SGD at ``lr`` times the label count (the loss averages over the
    labels) on minibatches of ``batch_size``, the cross-active threshold gamma rising from
    ``gamma`` to ``gamma_end`` over the last fifth of the epochs.

    Defaults measured on the emoji tasks (held-out group accuracy / tags mAP, with Word2Vec
    text): 1000 hidden units over 600 (0.750 / 0.742), lr 0.05 (0.03: 0.755 / 0.499, 0.06:
    0.758 / 0.515, 0.1: 0.739 / 0.524); text features "auto" (``AUTO_TEXT_FEATURES``)."""

    model: str = "cacnet"
    dim: int = 1000
    epochs: int = 40
    lr: float = 0.05
    batch_size: int = 20
    image_dim: int = 300
    text_features: str = "auto"
    text_dim: int = 300
    ngrams: int = 1
    gamma: float = 0.4
    gamma_end: float = 0.8
    patience: int | None = None
    stop_epoch: int | None = None  # as Recipe's
    seed: int = 0

    def __post_init__(self):
        if self.dim % 2:
            raise ValueError(f"dim of cacnet must be even (an image and a text half), got "
                             f"{self.dim}")


AUTOENCODERS = ("joint_ae", "crossmodal_ae_i", "crossmodal_ae_ii")
PROBE_L2 = (0.1, 1.0, 10.0)  # the probes' penalties tried on validation when l2 is None


@dataclass
class AutoencoderRecipe(_TaskFreeRecipe):
    """Paper 002's autoencoders (DESIGN 3.3) as classifiers: the store's image features
    PCA-whitened to ``image_dim`` and standardized ``text_features`` of width ``text_dim``
    train the autoencoder (``epochs`` of ``batch_size`` rows, ``optimizer`` at ``lr``, text
    weight ``mu``); its hidden units then feed one L2-regularized logistic regression per label
    (penalty ``l2``; None picks one of ``PROBE_L2`` on the validation split). The cross-modal
    ones read only the image at prediction time.

    Text features "auto" (``AUTO_TEXT_FEATURES``) by default: held-out emoji group accuracy /
    tags mAP, hashed -> word2vec, joint 0.610 / 0.439 -> 0.683 / 0.524, cross-modal I 0.685 /
    0.522 -> 0.653 / 0.506, cross-modal II 0.696 / 0.523 -> 0.667 / 0.535; on the Adwaita
    icons hashed won (joint 0.794 against 0.671)."""

    model: str = "joint_ae"
    epochs: int = 30
    lr: float = 1e-3
    batch_size: int = 32
    optimizer: str = "adam"
    image_dim: int = 200
    text_features: str = "auto"
    text_dim: int = 100
    ngrams: int = 1
    mu: float = 10.0
    l2: float | None = None
    seed: int = 0

    def __post_init__(self):
        if self.model not in AUTOENCODERS:
            raise ValueError(f"model must be one of {AUTOENCODERS}, got {self.model!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")


ANANETS = ("ananet", "ananet_alignment", "ananet_association", "ananet_concat")


@dataclass
class AnANetRecipe(_TaskFreeRecipe):
    """Paper 004's AnANet (DESIGN 3.4) on region features [Kr, D] from the store (``mmfast
    features --regions grid``) and the text's first ``num_words`` words as Word2Vec vectors of
    width ``text_dim`` trained on the training texts (no contextual vectors: no BERT offline);
    ``dim`` hidden units, Adam at ``lr`` on minibatches of ``batch_size`` (the paper's 1e-3 and
    64). The variants drop the alignment or the association net, or concatenate instead."""

    model: str = "ananet"
    dim: int = 128
    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 64
    text_dim: int = 50
    num_words: int = 8
    patience: int | None = None
    stop_epoch: int | None = None  # as Recipe's
    seed: int = 0

    def __post_init__(self):
        if self.model not in ANANETS:
            raise ValueError(f"model must be one of {ANANETS}, got {self.model!r}")
        if self.dim % 2:
            raise ValueError(f"dim of ananet must be even (two GRU directions), got {self.dim}")


# Recipe fields that only some of the systems sharing a recipe read; a flag setting one for
# another system is refused (it would be ignored).
_ONLY = {"average_every": FASTTEXT_MODELS, "alpha": ("pq", "rspq"),
         "subvectors": ("pq", "rspq"), "centroids": ("pq", "rspq"), "repetitions": ("rspq",),
         "dropout": ("mlp",), "gate": GATED_MODELS, "mu": ("joint_ae", "crossmodal_ae_ii"),
         "text_lr_scale": tuple(model for model in MODELS if model not in FASTTEXT_MODELS)}


def reads_setting(recipe: type, model: str, field: str) -> bool:
    """Whether ``model``, trained with a ``recipe`` (a recipe class), reads ``field``."""
    names = {f.name for f in dataclasses.fields(recipe)} - {"model"}
    return field in names and model in _ONLY.get(field, (model,))
