"""The dataset names a run accepts, and the augmentations (no heavy imports: config validation uses it).

A dataset name is a TFDS dataset, optionally followed by ``/<store>``, the storage format chosen when the
dataset was prepared (TFDS builder configs of the same dataset):

``imagenet2012``          the original JPEGs as in the ILSVRC-2012 archives (TFDS' own layout; a data_dir
                          filled by ``tfds build imagenet2012 --file_format=array_record`` reads the same).
                          Loaders decode them and bring them to 256x256 on the host (the costly path).
``imagenet2012/jpeg256``  every image rescaled so that its shorter side is 256, the central 256x256 kept
                          (K12 §2), re-encoded as JPEG at ``JPEG256_QUALITY`` (~21 KB an image on the 100
                          sample photos: ~25-30 GB for the 1.28 M training images).  Loaders decode a small
                          JPEG.
``imagenet2012/raw256``   the same 256x256 crops stored as raw uint8 (256 * 256 * 3 = 196,608 bytes a
                          record, about 250 GB for ILSVRC-2012 train, 10 GB for validation): loaders only
                          read records, no decoding at all.
"""

from __future__ import annotations

from alexnet_jax.errors import DatasetNameError

DATASETS = ("digits", "mnist", "cifar10", "imagenet2012")
AUGMENTS = ("none", "lenet", "lenet_affine", "cifar", "alexnet")
STORES = {"imagenet2012": ("jpeg256", "raw256")}
VERSIONS = {"digits": "1.0.0", "mnist": "3.0.1", "cifar10": "3.0.2", "imagenet2012": "5.1.0"}
JPEG256_QUALITY = 90          # ~21-25 KB a 256x256 ImageNet image (85: ~20 KB, 95: ~36 KB), 1.5x decode vs 95


def dataset_names() -> tuple[str, ...]:
    """Every accepted dataset name: the datasets and their stores, e.g. ``imagenet2012/raw256``."""
    out: list[str] = []
    for d in DATASETS:
        out.append(d)
        out += [f"{d}/{s}" for s in STORES.get(d, ())]
    return tuple(out)


def split_name(name: str) -> tuple[str, str | None]:
    """``"imagenet2012/raw256"`` -> ``("imagenet2012", "raw256")``; ``"mnist"`` -> ``("mnist", None)``.

    Raises ValueError naming the valid names for an unknown dataset or store."""
    base, _, store = str(name).partition("/")
    if base not in DATASETS or (store and store not in STORES.get(base, ())):
        what = "dataset" if base not in DATASETS else f"store {store!r} of {base}"
        raise DatasetNameError(f"unknown {what} in {name!r}; valid dataset names: {', '.join(dataset_names())}")
    return base, (store or None)
