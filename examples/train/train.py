"""Logistic regression on generated data, with Python's standard library only.

Runs unchanged anywhere ctarget sends it.  It reads what ctarget provides:
  CTARGET_METRICS_FILE  JSON lines {"name", "value", "step"}: the loss and accuracy per epoch
  CTARGET_OUTPUTS_DIR   where the model goes (default ./outputs, which ctarget collects)
and runs as a plain script too: `python3 train.py --epochs 5`.
"""
import argparse
import json
import math
import os
import random


def generate(n, dim, rng):
    """Two Gaussian blobs, labelled 0 and 1, with a little label noise."""
    true_w = [rng.uniform(-2, 2) for _ in range(dim)]
    data = []
    for _ in range(n):
        x = [rng.gauss(0, 1) for _ in range(dim)]
        z = sum(w * v for w, v in zip(true_w, x))
        y = 1 if z + rng.gauss(0, 0.5) > 0 else 0
        data.append((x, y))
    return data


def sigmoid(z):
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def epoch(data, w, b, lr):
    """One pass of stochastic gradient descent; returns (w, b, mean log loss, accuracy)."""
    loss = correct = 0.0
    for x, y in data:
        p = sigmoid(sum(wi * xi for wi, xi in zip(w, x)) + b)
        loss -= math.log(max(p, 1e-12)) if y else math.log(max(1 - p, 1e-12))
        correct += (p >= 0.5) == (y == 1)
        g = p - y
        w = [wi - lr * g * xi for wi, xi in zip(w, x)]
        b -= lr * g
    return w, b, loss / len(data), correct / len(data)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--features", type=int, default=5)
    ap.add_argument("--learning-rate", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    data = generate(args.samples, args.features, rng)
    w, b = [0.0] * args.features, 0.0
    metrics_path = os.environ.get("CTARGET_METRICS_FILE")
    metrics = open(metrics_path, "a", encoding="utf-8") if metrics_path else None
    for step in range(args.epochs):
        rng.shuffle(data)
        w, b, loss, acc = epoch(data, w, b, args.learning_rate)
        print(f"epoch {step + 1}/{args.epochs}: loss {loss:.4f} accuracy {acc:.3f}", flush=True)
        if metrics:
            for name, value in (("loss", loss), ("accuracy", acc)):
                metrics.write(json.dumps({"name": name, "value": value, "step": step}) + "\n")
            metrics.flush()
    if metrics:
        metrics.close()

    out_dir = os.environ.get("CTARGET_OUTPUTS_DIR", "outputs")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "model.json"), "w", encoding="utf-8") as f:
        json.dump({"weights": w, "bias": b, "final_loss": loss, "accuracy": acc}, f, indent=2)
    print(f"model written to {os.path.join(out_dir, 'model.json')}")


if __name__ == "__main__":
    main()
