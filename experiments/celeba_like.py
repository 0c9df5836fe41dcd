"""A small data set in `flwrlabs/celeba`'s layout, generated offline: identities, boolean
attributes (some of them visible in the image), 32x32 RGB faces that show no real person.

For tests, studies and a first `dataset = "hf"` run without internet access:

    python -m experiments.celeba_like results/celeba-like

writes `results/celeba-like/data` (the data set) and `results/celeba-like/celeba-like.schema.json`
(its task schema) and prints the `make run` command that trains on it. Only `datasets`,
Pillow and NumPy are used: nothing here depends on fedmtl.
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CELEBA_SUBSET = "img_align+identity+attr"
CELEBA_SPLITS = ("train", "valid", "test")
# CelebA's 40 attributes, as flwrlabs/celeba names its boolean columns.
CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes",
    "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip
# The attributes whose signal is known, and what shows them; every other attribute of
# CELEBA_ATTRIBUTES is random per image, like "Young" (nothing in the image shows it).
CELEBA_LIKE_ATTRIBUTES: dict[str, str] = {
    "Smiling": "a bright patch where the mouth is",
    "Eyeglasses": "a dark bar across the eyes",
    "Wearing_Hat": "a coloured band at the top",
    "Male": "one value per identity, not in the image (each client's own head learns it)",
    "Young": "random: nothing in the image shows it",
}


def write_celeba_like(
    folder: str | Path,
    identities: int = 6,
    images_per_identity: int = 40,
    size: tuple[int, int] = (32, 32),
    seed: int = 0,
    splits: Sequence[float] | None = None,
) -> Path:
    """Write a small data set in `flwrlabs/celeba`'s layout into `folder` and return it.

    Columns: `image` (datasets `Image()`, RGB PNG of `size`), `celeb_id` (int64, distinct
    random ids, rows not sorted by them), and CelebA's 40 boolean attributes
    (`CELEBA_ATTRIBUTES`), each true for about half the rows; `CELEBA_LIKE_ATTRIBUTES` says
    which of them have a signal. Faces share a layout; each identity has its own skin
    and background colours, each image some noise and brightness jitter. Like the Hub set it
    is the subset `img_align+identity+attr` (a README.md names it) with splits train, valid
    and test; `splits` = (train, valid, test) shares per identity, e.g. (0.7, 0.15, 0.15);
    None: every row in train.
    """
    from datasets import Dataset, Image

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(1, 10 * identities + 100), size=identities, replace=False)
    rows: dict[str, list[Any]] = {"image": [], "celeb_id": [], "split": []}
    rows.update({a: [] for a in CELEBA_ATTRIBUTES})
    for celeb in ids:
        skin = rng.uniform(90, 200, size=3)
        background = rng.uniform(0, 255, size=3)
        male = bool(rng.random() < 0.5)
        marks = _split_names(images_per_identity, splits, rng)
        for k in range(images_per_identity):
            attrs = {a: bool(rng.random() < 0.5) for a in CELEBA_ATTRIBUTES}
            attrs |= {
                "Smiling": bool(k % 2),
                "Eyeglasses": bool((k // 2) % 2),
                "Wearing_Hat": bool(rng.random() < 0.5),
                "Male": male,
            }
            pixels = _face(size, skin, background, attrs, rng)
            rows["image"].append({"bytes": _png(pixels), "path": None})
            rows["celeb_id"].append(int(celeb))
            rows["split"].append(marks[k])
            for name, value in attrs.items():
                rows[name].append(value)
    order = rng.permutation(len(rows["celeb_id"]))  # identities interleaved, as in a real set
    subset = folder / CELEBA_SUBSET
    subset.mkdir(parents=True, exist_ok=True)
    written = []
    for split in CELEBA_SPLITS:
        chosen = [i for i in order if rows["split"][i] == split]
        if not chosen:
            continue
        columns = {k: [v[i] for i in chosen] for k, v in rows.items() if k != "split"}
        table = Dataset.from_dict(columns).cast_column("image", Image())
        table.to_parquet(subset / f"{split}-00000-of-00001.parquet")
        written.append(split)
    (folder / "README.md").write_text(_readme(written), encoding="utf-8")
    return folder


def _split_names(n: int, shares: Sequence[float] | None, rng: np.random.Generator) -> list[str]:
    if shares is None:
        return ["train"] * n
    counts = [round(s * n) for s in shares[1:]]
    names = ["valid"] * counts[0] + ["test"] * counts[1]
    names += ["train"] * (n - len(names))
    return [names[i] for i in rng.permutation(n)]


def _face(
    size: tuple[int, int],
    skin: np.ndarray,
    background: np.ndarray,
    attrs: dict[str, bool],
    rng: np.random.Generator,
) -> np.ndarray:
    """One H×W×3 uint8 face: an ellipse of skin on a background, plus what the attributes
    show."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    face = ((yy - 0.55 * h) / (0.42 * h)) ** 2 + ((xx - 0.5 * w) / (0.32 * w)) ** 2 <= 1
    img = np.where(face[..., None], skin, background).astype(np.float32)
    if attrs["Smiling"]:  # an open, bright smile; else a thin dark mouth
        img[_band(0.66, 0.84, h), _band(0.30, 0.70, w)] = 255
    else:
        img[_band(0.74, 0.78, h), _band(0.38, 0.62, w)] = 40
    if attrs["Eyeglasses"]:
        img[_band(0.38, 0.48, h), _band(0.15, 0.85, w)] = 15
    if attrs["Wearing_Hat"]:
        img[_band(0.0, 0.16, h), :] = (40, 60, 200)
    img = img * rng.uniform(0.85, 1.15) + rng.normal(0, 12, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _band(start: float, stop: float, n: int) -> slice:
    """Pixels [start, stop) of a side of n pixels, given as fractions; at least one pixel."""
    first = int(start * n)
    return slice(first, max(int(stop * n), first + 1))


def _png(pixels: np.ndarray) -> bytes:
    import PIL.Image

    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _readme(splits: Sequence[str]) -> str:
    """The data set card: its one subset and splits, as the Hub set declares them."""
    files = "\n".join(f"  - split: {s}\n    path: {CELEBA_SUBSET}/{s}-*.parquet" for s in splits)
    return (
        f"---\nconfigs:\n- config_name: {CELEBA_SUBSET}\n  data_files:\n{files}\n---\n\n"
        "A CelebA-like data set written by fedmtl's `experiments.celeba_like`: "
        "generated faces, no real person.\n"
    )


def celeba_like_schema(size: tuple[int, int] = (32, 32), splits: bool = False) -> dict:
    """The task schema for `write_celeba_like`'s data: every attribute a binary task, clients
    the identities; with `splits`, the data set's own train/valid/test splits."""
    schema: dict[str, Any] = {
        "description": "CelebA-like generated faces: attributes as binary tasks, clients = "
        "identities",
        "inputs": {"image": "image", "size": list(size), "channels": 3},
        "tasks": [{"name": a, "kind": "binary"} for a in CELEBA_LIKE_ATTRIBUTES],
        "group_by": "celeb_id",
        "partition_by": "Smiling",
    }
    if splits:
        schema["splits"] = {"train": "train", "val": "valid", "test": "test"}
    return schema


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m experiments.celeba_like <folder>`: write the CelebA-like set (and a schema
    of the five attributes whose signal is known) and print how to train on it."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("folder", type=Path, help="where to write the data set")
    parser.add_argument("--identities", type=int, default=6)
    parser.add_argument("--images-per-identity", type=int, default=40)
    parser.add_argument("--size", type=int, nargs=2, default=(32, 32), metavar=("H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    size = (args.size[0], args.size[1])
    write_celeba_like(
        args.folder / "data", args.identities, args.images_per_identity, size, args.seed
    )
    schema = args.folder / "celeba-like.schema.json"
    schema.write_text(json.dumps(celeba_like_schema(size), indent=2) + "\n", encoding="utf-8")
    common = (
        f"-c dataset=hf -c hf-dataset={(args.folder / 'data').resolve()} "
        f"-c hf-subset={CELEBA_SUBSET} -c partitioner=natural "
        f"-c num-clients={args.identities} -c encoder=cnn"
    )
    print(
        f"wrote {args.folder / 'data'} and {schema}. All 40 attributes as tasks (the schema of "
        f'the real flwrlabs/celeba):\n  make run ARGS="{common} '
        f'-c schema-file=deploy/sample-data/celeba.schema.json"\n'
        f'The five attributes of {schema.name}:\n  make run ARGS="{common} '
        f'-c schema-file={schema.resolve()}"'
    )


if __name__ == "__main__":
    main()
