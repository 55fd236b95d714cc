#!/usr/bin/env python3
"""Step `evaluate` of the iris pipeline.

Applies the model written by train.py to the held-out test split written by
prepare.py and writes the metrics file that Trainyard reads for the model
gates: a JSON object of numbers

    {"accuracy": ..., "macro_f1": ..., "log_loss": ..., "test_rows": ...}

Standard library only and deterministic.
"""

import argparse
import json
import math
import sys

DATASET_FORMAT = "iris-dataset/v1"
MODEL_FORMAT = "softmax-regression/v1"


def fail(message):
    """Print a clear error on stderr and exit with status 1."""
    print(f"evaluate.py: error: {message}", file=sys.stderr)
    sys.exit(1)


def load_json(path, what, expected_format):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        fail(f"{what} file not found: {path}")
    except (OSError, UnicodeDecodeError) as e:
        fail(f"cannot read {what} {path}: {e}")
    except json.JSONDecodeError as e:
        fail(f"{what} {path} is not valid JSON: {e}")
    if not isinstance(data, dict) or data.get("format") != expected_format:
        fail(f"{path} is not a {what} file (format {expected_format})")
    return data


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_compatible(model, data):
    """The model must have been trained on this dataset's features and classes."""
    try:
        n_features, n_classes = len(data["features"]), len(data["classes"])
        if model["features"] != data["features"]:
            raise ValueError(f"features {model['features']} != dataset {data['features']}")
        if model["classes"] != data["classes"]:
            raise ValueError(f"classes {model['classes']} != dataset {data['classes']}")
        if len(model["weights"]) != n_classes or len(model["biases"]) != n_classes:
            raise ValueError("weights/biases do not have one entry per class")
        if any(len(w) != n_features for w in model["weights"]):
            raise ValueError("a weight row does not have one entry per feature")
        if not all(is_number(v) for w in model["weights"] for v in w + model["biases"]):
            raise ValueError("weights and biases must be finite numbers")
        same_scaling = all(
            math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
            for a, b in zip(model["feature_mean"] + model["feature_std"],
                            data["mean"] + data["std"]))
        if not same_scaling:
            raise ValueError("feature means/stds differ: the model was trained on another split")
        xs, ys = data["test"]["x"], data["test"]["y"]
        if not xs or len(xs) != len(ys):
            raise ValueError("test split is empty or x/y lengths differ")
        for x, y in zip(xs, ys):
            if len(x) != n_features or not all(is_number(v) for v in x):
                raise ValueError(f"expected {n_features} finite numbers per test row, "
                                 f"found {x!r}")
            if not isinstance(y, int) or not 0 <= y < n_classes:
                raise ValueError(f"test label {y!r} out of range")
    except KeyError as e:
        fail(f"model or dataset is malformed: missing field {e}")
    except TypeError as e:
        fail(f"model or dataset is malformed: {e}")
    except ValueError as e:
        fail(f"model does not match the dataset: {e}")


def softmax(scores):
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = math.fsum(exps)
    return [e / total for e in exps]


def predict_proba(model, x):
    return softmax([b + math.fsum(w_j * x_j for w_j, x_j in zip(w, x))
                    for w, b in zip(model["weights"], model["biases"])])


def metrics_for(model, xs, ys, n_classes):
    confusion = [[0] * n_classes for _ in range(n_classes)]  # [true][predicted]
    log_loss = 0.0
    for x, y in zip(xs, ys):
        p = predict_proba(model, x)
        predicted = max(range(n_classes), key=p.__getitem__)
        confusion[y][predicted] += 1
        log_loss -= math.log(min(max(p[y], 1e-15), 1.0))
    n = len(xs)

    f1s = []
    for k in range(n_classes):
        tp = confusion[k][k]
        fp = sum(confusion[t][k] for t in range(n_classes)) - tp
        fn = sum(confusion[k]) - tp
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)

    metrics = {
        "accuracy": round(sum(confusion[k][k] for k in range(n_classes)) / n, 6),
        "macro_f1": round(math.fsum(f1s) / n_classes, 6),
        "log_loss": round(log_loss / n, 6),
        "test_rows": n,
    }
    return metrics, confusion, f1s


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Evaluate a model from train.py on the test split from prepare.py.")
    parser.add_argument("--data", required=True, help="dataset JSON written by prepare.py")
    parser.add_argument("--model", required=True, help="model JSON written by train.py")
    parser.add_argument("--metrics", required=True, help="path of the metrics JSON to write")
    args = parser.parse_args(argv)

    data = load_json(args.data, "dataset", DATASET_FORMAT)
    model = load_json(args.model, "model", MODEL_FORMAT)
    check_compatible(model, data)

    classes = data["classes"]
    try:
        metrics, confusion, f1s = metrics_for(model, data["test"]["x"], data["test"]["y"],
                                              len(classes))
    except (OverflowError, ValueError) as e:
        fail(f"cannot apply the model (its weights overflow): {e}")
    try:
        with open(args.metrics, "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2, sort_keys=True)
            f.write("\n")
    except OSError as e:
        fail(f"cannot write {args.metrics}: {e}")

    width = max(len(c) for c in classes)
    print(f"confusion matrix on {metrics['test_rows']} test rows (rows: true, columns: predicted)")
    print(" " * (width + 2) + "  ".join(f"{c[:10]:>10}" for c in classes) + "          f1")
    for k, c in enumerate(classes):
        print(f"  {c:<{width}}" + "  ".join(f"{v:>10}" for v in confusion[k])
              + f"  {f1s[k]:10.4f}")
    for name in ("accuracy", "macro_f1", "log_loss"):
        print(f"{name:<9} {metrics[name]:.4f}")
    print(f"wrote {args.metrics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
