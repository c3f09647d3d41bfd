"""A function that probes its sandbox: what it sees, what it may read and write, and what
its layers gave it. Each event names one probe."""

import ctypes
import errno
import json
import os
import sys


def internal_extension():
    """An internal extension: registered from the runtime's own process while it
    initialises, it follows the invocations on a thread of its own."""
    import threading
    import urllib.request

    api = "http://%s/2020-01-01/extension" % os.environ["AWS_LAMBDA_RUNTIME_API"]
    request = urllib.request.Request(
        api + "/register",
        data=json.dumps({"events": ["INVOKE"]}).encode(),
        method="POST",
        headers={"Lambda-Extension-Name": "internal-ext"},
    )
    with urllib.request.urlopen(request) as response:
        identifier = response.headers["Lambda-Extension-Identifier"]

    def follow():
        while True:
            request = urllib.request.Request(
                api + "/event/next", headers={"Lambda-Extension-Identifier": identifier}
            )
            with urllib.request.urlopen(request) as response:
                event = json.loads(response.read())
            print(f"internal-ext: {event['eventType']} {event.get('requestId')}", flush=True)

    threading.Thread(target=follow, daemon=True).start()


if os.environ.get("INTERNAL_EXTENSION"):
    internal_extension()


def handler(event, context):
    probe = event["probe"]
    print("probing", probe, "for", context.aws_request_id)
    if probe == "layout":
        return layout()
    if probe == "read":
        return {path: read(path) for path in event["paths"]}
    if probe == "write":
        return {path: write(path) for path in event["paths"]}
    if probe == "fill_tmp":
        return fill_tmp()
    if probe == "allocate":
        hold = bytearray(event["mb"] * 1024 * 1024)
        for i in range(0, len(hold), 4096):
            hold[i] = 1
        return {"allocated": len(hold)}
    if probe == "layers":
        return layers()
    if probe == "log":
        # Records at each level, as a runtime without its own JSON logger writes them.
        for level in ("DEBUG", "INFO", "WARN", "ERROR"):
            print(json.dumps({"level": level, "message": f"a {level} record"}), flush=True)
        print("a plain line", flush=True)
        return {"logged": True}
    raise ValueError(f"no probe {probe}")


def layout():
    return {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "pid": os.getpid(),
        "processes": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "cwd": os.getcwd(),
        "executable": sys.executable,
        "env": {
            k: os.environ.get(k)
            for k in (
                "LAMBDA_TASK_ROOT",
                "LAMBDA_RUNTIME_DIR",
                "PATH",
                "LD_LIBRARY_PATH",
                "PYTHONPATH",
                "AWS_LAMBDA_LOG_FORMAT",
                "AWS_LAMBDA_LOG_LEVEL",
            )
        },
        "runtime_has_client": os.path.isdir("/var/runtime/awslambdaric"),
        "task": sorted(os.listdir("/var/task")),
        "tmp": sorted(os.listdir("/tmp")),
        "no_new_privs": "NoNewPrivs:\t1" in open("/proc/self/status").read(),
    }


def read(path):
    try:
        with open(path, "rb") as f:
            return {"read": len(f.read())}
    except OSError as e:
        return {"error": errno.errorcode.get(e.errno, str(e.errno))}


def write(path):
    try:
        with open(path, "w") as f:
            f.write("planted")
        return {"written": True}
    except OSError as e:
        return {"error": errno.errorcode.get(e.errno, str(e.errno))}


def fill_tmp():
    chunk = b"x" * (1024 * 1024)
    written = 0
    error = None
    try:
        with open("/tmp/fill", "wb") as f:
            while written < 20 * 1024 * 1024 * 1024:
                f.write(chunk)
                f.flush()
                written += len(chunk)
    except OSError as e:
        error = errno.errorcode.get(e.errno, str(e.errno))
    os.remove("/tmp/fill")
    return {"written_mb": written // (1024 * 1024), "error": error}


def layers():
    import layered  # from a layer's python/

    lib = ctypes.CDLL("liblayered.so")  # from a layer's lib/, on LD_LIBRARY_PATH
    return {
        "module": layered.VALUE,
        "module_file": layered.__file__,
        "library": lib.layered_answer(),
        "tool": os.access("/opt/bin/layered-tool", os.X_OK),
    }
