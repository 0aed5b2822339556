"""Data layer: the `Dataset` value, UGallery-format readers, the project format, statistics."""

from curatornet.dataset import Baskets, Dataset
from training.data.formats import DataError, load_dataset, save_dataset

__all__ = ["Baskets", "DataError", "Dataset", "load_dataset", "save_dataset"]
