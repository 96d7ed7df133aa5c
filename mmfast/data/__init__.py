"""Manifests, feature stores and the embedded demo dataset."""

from mmfast.data.emoji import DemoData, demo_cache_dir, emoji_dataset
from mmfast.data.image_folder import (
    IMAGE_EXTENSIONS, ImageFolderRecords, image_folder_records, split_records, validation_split,
    write_image_folder_manifest,
)
from mmfast.data.manifest import Manifest, ManifestError, Record, read_manifest, write_manifest
from mmfast.data.relevance import RELEVANCE_LABELS, Pair, relevance_pairs, relevance_records
from mmfast.data.store import FeatureStore

__all__ = [
    "DemoData", "demo_cache_dir", "emoji_dataset", "Manifest", "ManifestError", "Record",
    "read_manifest", "write_manifest", "FeatureStore", "RELEVANCE_LABELS", "Pair",
    "relevance_pairs", "relevance_records", "IMAGE_EXTENSIONS", "ImageFolderRecords",
    "image_folder_records",
    "split_records", "validation_split", "write_image_folder_manifest",
]
