"""Pipeline step 1: make a small data set (rows of x, y) as the step's output 'features'."""
import os
import random
import sys

rows = int(sys.argv[1]) if len(sys.argv) > 1 else 200
out = os.environ.get("CTARGET_OUTPUT_FEATURES", "outputs/features")
os.makedirs(out, exist_ok=True)
rnd = random.Random(7)
with open(os.path.join(out, "data.csv"), "w") as f:
    for _ in range(rows):
        x = rnd.uniform(-1, 1)
        f.write("%.6f,%d\n" % (x, 1 if x + rnd.gauss(0, 0.3) > 0 else 0))
print("wrote %d rows to %s" % (rows, out))
