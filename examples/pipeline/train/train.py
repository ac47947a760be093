"""Pipeline step 2: fit a threshold on the input 'features'; the model is the output 'model'."""
import os

src = os.path.join(os.environ.get("CTARGET_INPUT_FEATURES", "inputs/features"), "data.csv")
rows = [tuple(map(float, line.split(","))) for line in open(src)]
best = max((sum((x > t) == (y > 0.5) for x, y in rows) / len(rows), t)
           for t in [i / 50 - 1 for i in range(101)])
out = os.environ.get("CTARGET_OUTPUT_MODEL", "outputs/model")
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "model.txt"), "w") as f:
    f.write("threshold=%.2f accuracy=%.3f\n" % (best[1], best[0]))
print("threshold %.2f, accuracy %.3f on %d rows" % (best[1], best[0], len(rows)))
