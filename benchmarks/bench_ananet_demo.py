"""Paper 004's Table IV on the embedded emoji data: AnANet against association-only,
alignment-only and concatenation, held-out accuracy and weighted F1 on a 3-class image-text
relevance task (``mmfast.data.relevance_records``: own caption / same-group caption /
other-group caption), each trained as its ``ananet*`` system (``mmfast train --model ananet``
trains the same way; ``mmfast demo --paper 004`` prints the same table).

    .venv/bin/python -m pytest benchmarks/bench_ananet_demo.py -s

Inputs (the paper's Faster R-CNN and BERT cannot be had offline): regions are the 4 x 4 cells
of EfficientNet-Lite0's last convolutional map at 128 px (ImageNet weights shipped with mmfast),
Kr = 16 regions of 1280-d, cached in a feature store; words are Word2Vec vectors trained on the
train split's captions (held-out words it never saw are out of vocabulary, as they would be for
a deployed model), N = 8, no contextual vectors, so the comparable rows of Table IV are the
"-BERT" ones. Every variant has the same encoders, seeds and data order; a seeded 10% of the
training pairs validates (best epoch kept, 3 epochs of patience).

What to expect: the captions are 1-3 words, many held-out ones share no word with the train
vocabulary, and since every image is paired with all three classes, only a variant that compares
the two sides (the alignment net) has a signal to learn. The ordering differs from the paper's.
"""

from mmfast.experiments.ananet_demo import run


def test_ananet_ablation_table(two_threads):
    reports = run()
    print(f"{two_threads} threads")
    # Each image comes with all three classes, so the class lies in the pairing alone: a variant
    # whose only view of the two sides is a linear head on [image vector, text vector]
    # (association only, concatenation) adds an image score to a text score and has next to no
    # signal to learn, while the alignment net compares regions with words and must beat chance.
    support = reports["ananet_alignment"]["per_class"]["support"]
    assert reports["ananet_alignment"]["accuracy"] > max(support) / sum(support)
