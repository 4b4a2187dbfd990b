"""Regenerate the sample dataset from scikit-learn's handwritten digits.

1797 images of 8x8 pixels, 10 classes. Writes, next to this script:

- ``digits.h5``: datasets ``x`` (float32, 1797x8x8, pixel / 16) and ``y``
  (float32, 1797x10, one-hot), chunked along the sample axis;
- ``digits/x.npy`` and ``digits/y.npy``: the same arrays as a ``.npy`` pair.

Run: python sample_data/make_sample_data.py
"""

from pathlib import Path

import h5py
import numpy as np
from sklearn.datasets import load_digits


def main() -> None:
    here = Path(__file__).resolve().parent
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[digits.target]

    with h5py.File(here / "digits.h5", "w") as f:
        f.create_dataset("x", data=x, chunks=(256, 8, 8), compression="gzip")
        f.create_dataset("y", data=y, chunks=(256, 10), compression="gzip")
        f.attrs["source"] = "sklearn.datasets.load_digits"

    (here / "digits").mkdir(exist_ok=True)
    np.save(here / "digits" / "x.npy", x)
    np.save(here / "digits" / "y.npy", y)
    print(f"wrote {len(x)} rows to {here / 'digits.h5'} and {here / 'digits'}/")


if __name__ == "__main__":
    main()
