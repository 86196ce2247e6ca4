"""Data: image folders and zip archives, image-caption pairs, preprocessing, the data root."""

from .imagefolder import ClassInfo, ImageFolder, collate_skip_bad, read_class_map
from .imageio import BadImage, load_rgb
from .paths import data_path, data_root, has_data

__all__ = ["ClassInfo", "ImageFolder", "collate_skip_bad", "read_class_map", "BadImage", "load_rgb", "data_path", "data_root", "has_data"]
