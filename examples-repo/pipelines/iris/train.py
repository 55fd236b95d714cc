#!/usr/bin/env python3
"""Step `train` of the iris pipeline.

Fits a multinomial logistic regression (softmax regression) on the training
split written by prepare.py, with mini-batch gradient descent written in plain
Python, and writes the model as JSON: one weight row and one bias per class,
plus the feature means/standard deviations and class names needed to apply it
to raw measurements.

Standard library only; the same dataset, epochs, lr and seed always give the
same model.
"""

import argparse
import json
import math
import random
import sys

DATASET_FORMAT = "iris-dataset/v1"
MODEL_FORMAT = "softmax-regression/v1"


def fail(message):
    """Print a clear error on stderr and exit with status 1."""
    print(f"train.py: error: {message}", file=sys.stderr)
    sys.exit(1)


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_dataset(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        fail(f"dataset file not found: {path}")
    except (OSError, UnicodeDecodeError) as e:
        fail(f"cannot read dataset {path}: {e}")
    except json.JSONDecodeError as e:
        fail(f"dataset {path} is not valid JSON: {e}")
    if not isinstance(data, dict) or data.get("format") != DATASET_FORMAT:
        fail(f"{path} is not a dataset written by prepare.py (format {DATASET_FORMAT})")
    try:
        n_features = len(data["features"])
        n_classes = len(data["classes"])
        xs, ys = data["train"]["x"], data["train"]["y"]
        if not xs or len(xs) != len(ys):
            raise ValueError("train split is empty or x/y lengths differ")
        for x, y in zip(xs, ys):
            if len(x) != n_features or not all(is_number(v) for v in x):
                raise ValueError(f"expected {n_features} finite numbers per row, found {x!r}")
            if not isinstance(y, int) or not 0 <= y < n_classes:
                raise ValueError(f"label {y!r} out of range")
        if len(data["mean"]) != n_features or len(data["std"]) != n_features:
            raise ValueError("mean/std length does not match the features")
    except KeyError as e:
        fail(f"dataset {path} is malformed: missing field {e}")
    except (TypeError, ValueError) as e:
        fail(f"dataset {path} is malformed: {e}")
    return data


def softmax(scores):
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = math.fsum(exps)
    return [e / total for e in exps]


def predict_proba(weights, biases, x):
    return softmax([b + math.fsum(w_j * x_j for w_j, x_j in zip(w, x))
                    for w, b in zip(weights, biases)])


def evaluate(weights, biases, xs, ys, l2):
    """Mean cross-entropy (plus the L2 penalty) and accuracy on (xs, ys)."""
    loss, correct = 0.0, 0
    for x, y in zip(xs, ys):
        p = predict_proba(weights, biases, x)
        loss -= math.log(max(p[y], 1e-15))
        correct += max(range(len(p)), key=p.__getitem__) == y
    loss /= len(xs)
    loss += 0.5 * l2 * math.fsum(w_j * w_j for w in weights for w_j in w)
    return loss, correct / len(xs)


def train(xs, ys, n_classes, epochs, lr, batch_size, l2, seed, log_every):
    rng = random.Random(seed)
    n_features = len(xs[0])
    weights = [[rng.gauss(0.0, 0.01) for _ in range(n_features)] for _ in range(n_classes)]
    biases = [0.0] * n_classes
    order = list(range(len(xs)))

    for epoch in range(1, epochs + 1):
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            grad_w = [[0.0] * n_features for _ in range(n_classes)]
            grad_b = [0.0] * n_classes
            for i in batch:
                x = xs[i]
                p = predict_proba(weights, biases, x)
                p[ys[i]] -= 1.0  # d(cross-entropy)/d(score) = p - onehot(y)
                for k in range(n_classes):
                    grad_b[k] += p[k]
                    row = grad_w[k]
                    for j in range(n_features):
                        row[j] += p[k] * x[j]
            scale = lr / len(batch)
            for k in range(n_classes):
                biases[k] -= scale * grad_b[k]
                w = weights[k]
                for j in range(n_features):
                    w[j] -= scale * grad_w[k][j] + lr * l2 * w[j]

        if epoch % log_every == 0 or epoch == 1 or epoch == epochs:
            loss, acc = evaluate(weights, biases, xs, ys, l2)
            if not math.isfinite(loss):
                fail(f"training diverged at epoch {epoch} (loss {loss}); try a smaller --lr")
            print(f"epoch {epoch:>4}/{epochs}  loss {loss:.4f}  train_accuracy {acc:.4f}",
                  flush=True)
    return weights, biases


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Train a softmax regression on the dataset written by prepare.py.")
    parser.add_argument("--data", required=True, help="dataset JSON written by prepare.py")
    parser.add_argument("--model", required=True, help="path of the model JSON to write")
    parser.add_argument("--epochs", type=int, default=200,
                        help="passes over the training rows (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=0.1,
                        help="learning rate (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=42,
                        help="seed for initial weights and batch order (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="rows per gradient step (default: %(default)s)")
    parser.add_argument("--l2", type=float, default=0.0001,
                        help="L2 weight decay (default: %(default)s)")
    parser.add_argument("--log-every", type=int, default=20,
                        help="print the loss every N epochs (default: %(default)s)")
    args = parser.parse_args(argv)

    if not 1 <= args.epochs <= 100000:
        parser.error("--epochs must be between 1 and 100000")
    if not (math.isfinite(args.lr) and args.lr > 0.0):
        parser.error("--lr must be a positive number")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if not (math.isfinite(args.l2) and args.l2 >= 0.0):
        parser.error("--l2 must be zero or positive")
    if args.log_every < 1:
        parser.error("--log-every must be at least 1")

    data = load_dataset(args.data)
    xs, ys = data["train"]["x"], data["train"]["y"]
    classes = data["classes"]
    print(f"training softmax regression on {len(xs)} rows, {len(data['features'])} features, "
          f"{len(classes)} classes (epochs={args.epochs}, lr={args.lr}, "
          f"batch_size={args.batch_size}, l2={args.l2}, seed={args.seed})", flush=True)

    try:
        weights, biases = train(xs, ys, len(classes), args.epochs, args.lr,
                                args.batch_size, args.l2, args.seed, args.log_every)
        loss, acc = evaluate(weights, biases, xs, ys, args.l2)
    except (OverflowError, ValueError):
        # Weights grew to inf/nan: the step size is too large for this data.
        fail(f"training diverged (weights overflowed) with lr={args.lr}; try a smaller --lr")
    if not all(math.isfinite(v) for row in weights for v in row + biases):
        fail(f"training diverged (non-finite weights) with lr={args.lr}; try a smaller --lr")

    model = {
        "format": MODEL_FORMAT,
        "features": data["features"],
        "classes": classes,
        "feature_mean": data["mean"],
        "feature_std": data["std"],
        "weights": weights,
        "biases": biases,
        "hyperparameters": {"epochs": args.epochs, "lr": args.lr, "seed": args.seed,
                            "batch_size": args.batch_size, "l2": args.l2},
        "train": {"rows": len(xs), "loss": loss, "accuracy": acc},
    }
    try:
        with open(args.model, "w", encoding="utf-8") as f:
            json.dump(model, f, indent=1, sort_keys=True)
            f.write("\n")
    except OSError as e:
        fail(f"cannot write {args.model}: {e}")
    print(f"final train loss {loss:.4f}, train accuracy {acc:.4f}")
    print(f"wrote {args.model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
