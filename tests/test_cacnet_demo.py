"""Paper 000's Table 4 pipeline (mmfast.experiments.cacnet_demo) on a slice of the emoji tags
task, with random image features in place of the EfficientNet extraction (its PCA:
tests/test_features.py)."""

import numpy as np

from mmfast.data import emoji_dataset, read_manifest
from mmfast.defaults import CACNetRecipe
from mmfast.experiments.cacnet_demo import HASHTAG_METRICS, table4


def test_table4_pipeline_on_a_slice_of_the_tags_task(tmp_path):
    data = emoji_dataset("tags", root=tmp_path)
    assert data.multilabel
    train, heldout = read_manifest(data.train)[::10], read_manifest(data.heldout)[::10]
    rng = np.random.default_rng(0)
    image_dim = 1280  # EfficientNet-Lite0's pooled features
    train_image = rng.standard_normal((len(train), image_dim), dtype=np.float32)
    heldout_image = rng.standard_normal((len(heldout), image_dim), dtype=np.float32)
    epochs = 5
    recipe = CACNetRecipe(dim=16, epochs=epochs, image_dim=16, text_dim=16)
    rows = table4(train, heldout, train_image, heldout_image, data.labels, recipe)
    assert set(rows) == {"CACNet", "CACNet(gamma=1)", "MLP"}
    steps = epochs * -(-len(train) // 20)
    assert rows["CACNet"]["steps"] == rows["CACNet(gamma=1)"]["steps"] == steps
    assert rows["CACNet(gamma=1)"]["case2_steps"] == 0
    for row in rows.values():
        assert all(0.0 <= row[name] <= 1.0 for name, _, _ in HASHTAG_METRICS)
        assert row["Acc@1"] <= row["Acc@3"] <= row["Acc@5"]
    # fixed seeds: the same run gives the same table
    assert table4(train, heldout, train_image, heldout_image, data.labels, recipe) == rows
