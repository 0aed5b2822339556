"""Data layer: UGallery-format readers, the project format, statistics. The `Dataset` value
they fill lives in `curatornet.dataset`, shared with the service's demo."""
