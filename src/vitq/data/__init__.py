"""Data: image folders and zip archives, image-caption pairs, preprocessing, the data root."""

from .captions import CaptionPairs, read_caption_csv
from .imagefolder import ClassInfo, ImageFolder, collate_skip_bad, read_class_map
from .imageio import BadImage, load_rgb
from .paths import data_path, data_root, has_data
from .preprocess import CLIP_MEAN, CLIP_STD, ProcessorTransform, ResizeCropNormalize, image_transform, transform_from_config

__all__ = [
    "ClassInfo", "ImageFolder", "collate_skip_bad", "read_class_map", "BadImage", "load_rgb",
    "data_path", "data_root", "has_data",
    "CaptionPairs", "read_caption_csv",
    "CLIP_MEAN", "CLIP_STD", "ProcessorTransform", "ResizeCropNormalize", "image_transform", "transform_from_config",
]
