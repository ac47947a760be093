"""ctarget's bootstrap for Databricks python tasks (uploaded to DBFS with every step).

    dbx_boot.py RUN_DIR -- [ARGS...]

RUN_DIR is the step's DBFS folder (/ctarget/runs/<run id>), read through the driver's DBFS
FUSE mount: $CTARGET_DBFS_FUSE (the emulator's local DBFS root) or /dbfs.  It holds run.json
({"run_id", "script", "env": ["NAME=value", ...]}) and snapshot/ (the step's source tree with
its inputs under inputs/<name>/).  The bootstrap copies snapshot/ into a fresh temporary
directory, runs `python SCRIPT ARGS...` there with CTARGET_RUN_ID, CTARGET_OUTPUTS_DIR
(./outputs), CTARGET_METRICS_FILE (RUN_DIR/metrics.jsonl) and the step's variables set, appends
its stdout and stderr to RUN_DIR/std_log.txt as they come (ctarget reads it by offset), then
copies ./outputs and ./logs back to RUN_DIR/outputs and RUN_DIR/logs, records the exit status
in RUN_DIR/exit_code and exits with it.  Standard library only.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile


def fail(msg, code=97):
    sys.stderr.write("ctarget dbx_boot: %s\n" % msg)
    sys.exit(code)


def safe_script(s):
    if not isinstance(s, str) or not s or s.startswith("/") or any(
            p in ("", ".", "..") for p in s.split("/")):
        fail("unsafe script path %r in run.json" % (s,))
    return s


def main(argv):
    if len(argv) < 2 or argv[1] != "--":
        fail("usage: dbx_boot.py RUN_DIR -- [ARGS...]")
    run_dir, args = argv[0], argv[2:]
    if not run_dir.startswith("/") or ".." in run_dir.split("/"):
        fail("RUN_DIR must be an absolute DBFS path: %r" % run_dir)
    if run_dir.startswith("dbfs:"):
        run_dir = run_dir[5:]
    fuse = os.environ.get("CTARGET_DBFS_FUSE") or "/dbfs"
    rd = os.path.join(fuse, run_dir.lstrip("/"))
    try:
        with open(os.path.join(rd, "run.json"), encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, ValueError) as e:
        fail("cannot read %s/run.json: %s" % (rd, e))
    script = safe_script(spec.get("script"))
    work = tempfile.mkdtemp(prefix="ctarget-")
    snap = os.path.join(rd, "snapshot")
    if os.path.isdir(snap):
        shutil.copytree(snap, work, symlinks=False, dirs_exist_ok=True)
    outputs = os.path.join(work, "outputs")
    os.makedirs(outputs, exist_ok=True)
    env = dict(os.environ)
    for kv in spec.get("env", []):
        k, _, v = kv.partition("=")
        if k:
            env[k] = v
    env["CTARGET_RUN_ID"] = str(spec.get("run_id", ""))
    env["CTARGET_OUTPUTS_DIR"] = outputs
    env["CTARGET_METRICS_FILE"] = os.path.join(rd, "metrics.jsonl")
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("CTARGET_DBFS_FUSE", None)
    python = spec.get("python") or sys.executable or "python3"
    log = open(os.path.join(rd, "std_log.txt"), "ab", buffering=0)
    try:
        child = subprocess.Popen([python, script] + args, cwd=work, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as e:
        log.write(("ctarget dbx_boot: cannot start %s: %s\n" % (python, e.strerror)).encode())
        fail("cannot start %s: %s" % (python, e.strerror))

    def forward(signum, frame):
        try:
            child.send_signal(signum)
        except OSError:
            pass
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    fd = child.stdout.fileno()
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        log.write(chunk)
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
    rc = child.wait()
    log.close()
    for name in ("outputs", "logs"):
        src = os.path.join(work, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(rd, name), symlinks=False, dirs_exist_ok=True)
    code = rc if rc >= 0 else 128 - rc
    with open(os.path.join(rd, "exit_code.tmp"), "w") as f:
        f.write("%d\n" % code)
    os.replace(os.path.join(rd, "exit_code.tmp"), os.path.join(rd, "exit_code"))
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
