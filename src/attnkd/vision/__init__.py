"""Image models for the ``image_classification`` task: Fashion-MNIST idx files, augmentation,
CNN/ViT builders, save/load, channel pruning and dataset condensation (DataDAM, DM)."""

from attnkd.vision.condense import CondenseConfig, CondenseResult, condense, matching_loss
from attnkd.vision.data import (
    ImageBatches,
    accuracy,
    augment,
    balanced_subset,
    split_train,
    to_float,
)
from attnkd.vision.idx import ImageSet, image_dir, load_fashion_mnist, read_idx
from attnkd.vision.io import is_image_model, load_image_model, save_image_model
from attnkd.vision.models import (
    BUILDERS,
    NO_TEACHER,
    ImageCNN,
    ImageModelConfig,
    ImageViT,
    NoTeacher,
    build_model,
)
from attnkd.vision.prune import prune_channels

__all__ = [
    "BUILDERS",
    "NO_TEACHER",
    "CondenseConfig",
    "CondenseResult",
    "ImageBatches",
    "ImageCNN",
    "ImageModelConfig",
    "ImageSet",
    "ImageViT",
    "NoTeacher",
    "accuracy",
    "augment",
    "balanced_subset",
    "build_model",
    "condense",
    "image_dir",
    "is_image_model",
    "load_fashion_mnist",
    "load_image_model",
    "matching_loss",
    "prune_channels",
    "read_idx",
    "save_image_model",
    "split_train",
    "to_float",
]
