#!/usr/bin/env python3
"""Step `prepare` of the iris pipeline.

Reads the Iris CSV, shuffles it with a fixed seed, splits it into a train and
a test set (stratified: every species keeps the same share in both), scales
the four features with the mean and standard deviation of the TRAIN rows only,
and writes everything the next steps need to one JSON file.

Standard library only; the same input and seed always give the same file.
"""

import argparse
import csv
import hashlib
import json
import math
import os
import random
import sys

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
LABEL = "species"
FORMAT = "iris-dataset/v1"


def fail(message):
    """Print a clear error on stderr and exit with status 1."""
    print(f"prepare.py: error: {message}", file=sys.stderr)
    sys.exit(1)


def read_rows(path):
    """Return [(features, species)] from the CSV at `path`, checking every row."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                fail(f"{path} is empty")
            header = [h.strip() for h in header]
            if header != FEATURES + [LABEL]:
                fail(f"{path}: expected header {','.join(FEATURES + [LABEL])!r}, "
                     f"found {','.join(header)!r}")
            rows = []
            for line_no, record in enumerate(reader, start=2):
                if not record or all(not cell.strip() for cell in record):
                    continue  # tolerate blank lines
                if len(record) != len(FEATURES) + 1:
                    fail(f"{path}:{line_no}: expected {len(FEATURES) + 1} columns, "
                         f"found {len(record)}")
                try:
                    x = [float(cell) for cell in record[:len(FEATURES)]]
                except ValueError:
                    fail(f"{path}:{line_no}: feature values must be numbers: {record}")
                if not all(math.isfinite(v) for v in x):
                    fail(f"{path}:{line_no}: feature values must be finite: {record}")
                species = record[-1].strip()
                if not species:
                    fail(f"{path}:{line_no}: missing species")
                rows.append((x, species))
    except FileNotFoundError:
        fail(f"data file not found: {path}")
    except (OSError, UnicodeDecodeError) as e:
        fail(f"cannot read {path}: {e}")
    return rows


def stratified_split(rows, classes, test_fraction, seed):
    """Shuffle each class with `seed` and cut `test_fraction` of it off as test rows."""
    rng = random.Random(seed)
    train, test = [], []
    for species in classes:
        members = [r for r in rows if r[1] == species]
        rng.shuffle(members)
        n_test = round(len(members) * test_fraction)
        if n_test < 1 or n_test >= len(members):
            fail(f"class {species!r} has {len(members)} rows: too few for a "
                 f"test fraction of {test_fraction}")
        test.extend(members[:n_test])
        train.extend(members[n_test:])
    # Mix the classes so that the training order carries no label information.
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def column_stats(xs):
    """Mean and (population) standard deviation of every column."""
    n = len(xs)
    means = [math.fsum(x[j] for x in xs) / n for j in range(len(FEATURES))]
    stds = []
    for j, m in enumerate(means):
        var = math.fsum((x[j] - m) ** 2 for x in xs) / n
        if var <= 0.0:
            fail(f"feature {FEATURES[j]!r} is constant in the training rows")
        stds.append(math.sqrt(var))
    return means, stds


def standardize(rows, means, stds, class_index):
    return {
        "x": [[round((v - m) / s, 12) for v, m, s in zip(x, means, stds)] for x, _ in rows],
        "y": [class_index[species] for _, species in rows],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Split and standardize the Iris data set into one JSON file.")
    parser.add_argument("--data", default="data/iris.csv",
                        help="input CSV (default: %(default)s)")
    parser.add_argument("--out", required=True,
                        help="path of the JSON dataset file to write")
    parser.add_argument("--seed", type=int, default=42,
                        help="shuffle seed (default: %(default)s)")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="share of every class held out for testing (default: %(default)s)")
    args = parser.parse_args(argv)

    if not 0.0 < args.test_fraction < 1.0:
        parser.error("--test-fraction must be between 0 and 1 (exclusive)")

    rows = read_rows(args.data)
    classes = sorted({species for _, species in rows})
    if len(classes) < 2:
        fail(f"{args.data}: need at least 2 species, found {len(classes)}")
    class_index = {c: i for i, c in enumerate(classes)}

    train, test = stratified_split(rows, classes, args.test_fraction, args.seed)
    means, stds = column_stats([x for x, _ in train])

    with open(args.data, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()

    dataset = {
        "format": FORMAT,
        "source": {"file": os.path.basename(args.data), "sha256": digest, "rows": len(rows)},
        "seed": args.seed,
        "test_fraction": args.test_fraction,
        "features": FEATURES,
        "classes": classes,
        "mean": means,
        "std": stds,
        "train": standardize(train, means, stds, class_index),
        "test": standardize(test, means, stds, class_index),
    }
    try:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(dataset, f, indent=1, sort_keys=True)
            f.write("\n")
    except OSError as e:
        fail(f"cannot write {args.out}: {e}")

    print(f"read {len(rows)} rows, {len(classes)} classes: {', '.join(classes)}")
    print(f"split with seed {args.seed}: {len(train)} train / {len(test)} test rows")
    for name, m, s in zip(FEATURES, means, stds):
        print(f"  {name:<13} mean {m:7.4f}  std {s:7.4f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
