"""A function that probes the Runtime API from inside an execution environment (stdlib only)
and reports what it saw. The event's "action" says what to do; statuses of calls whose answer
the invoker cannot see are kept and reported by the next "report" invocation."""

import json
import os
import time
import urllib.error
import urllib.request

BASE = "http://%s/2018-06-01/runtime/" % os.environ["AWS_LAMBDA_RUNTIME_API"]
seen = {}


def call(method, path, body=None, headers=None):
    req = urllib.request.Request(BASE + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def error_type(body):
    try:
        return json.loads(body).get("errorType")
    except ValueError:
        return None


if os.environ.get("PROBE_INIT_SLEEP"):
    time.sleep(float(os.environ["PROBE_INIT_SLEEP"]))

if os.environ.get("PROBE_INIT_ERROR"):
    call("POST", "init/error", json.dumps({"errorMessage": "no config", "errorType": "InitBroke"}).encode(),
         {"Lambda-Runtime-Function-Error-Type": "InitBroke"})
    raise SystemExit(1)

while True:
    with urllib.request.urlopen(BASE + "invocation/next") as r:
        rid = r.headers["Lambda-Runtime-Aws-Request-Id"]
        headers = {k.lower(): v for k, v in r.headers.items()}
        event = json.load(r)
    action = event.get("action")
    if action == "probe":
        status, body = call("POST", "invocation/not-a-real-id/response", b"{}")
        seen["unknown_id"] = [status, error_type(body)]
        status, body = call("GET", "nope")
        seen["unknown_route"] = [status, error_type(body)]
        status, body = call("POST", "invocation/next", b"")
        seen["wrong_method"] = [status, error_type(body)]
        status, body = call("POST", "init/error", b'{"errorMessage": "late", "errorType": "Late"}')
        seen["late_init_error"] = [status, error_type(body)]
        reply = {"headers": headers, "env": {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "_HANDLER", "LAMBDA_", "TZ"))}}
        status, _ = call("POST", "invocation/%s/response" % rid, json.dumps(reply).encode())
        seen["first_response"] = status
        status, body = call("POST", "invocation/%s/response" % rid, b"{}")
        seen["second_response"] = [status, error_type(body)]
    elif action == "orphan":
        # A process that leaves the environment's process group.
        import subprocess
        child = subprocess.Popen(["setsid", "sleep", "300"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        call("POST", "invocation/%s/response" % rid, json.dumps({"orphan": child.pid}).encode())
        continue
    elif action == "big":
        status, body = call("POST", "invocation/%s/response" % rid, b"x" * (7 * 1024 * 1024))
        seen["big_response"] = [status, error_type(body), json.loads(body).get("errorMessage")]
    elif action == "sleep":
        time.sleep(event.get("seconds", 1))
        call("POST", "invocation/%s/response" % rid, b'"slept"')
    elif action == "flaky":
        # One line per attempt in a file, so attempts are counted across processes; fails
        # until the attempt after the first `fails`.
        with open(event["log"], "a") as f:
            f.write("attempt\n")
        with open(event["log"]) as f:
            attempts = len(f.readlines())
        time.sleep(event.get("hold", 0))
        if attempts <= event["fails"]:
            call("POST", "invocation/%s/error" % rid, json.dumps({"errorMessage": "flaky", "errorType": "Flaky"}).encode())
        else:
            call("POST", "invocation/%s/response" % rid, b'"ok"')
    elif action == "chatter":
        # Lines on both streams, right before the reply: none may land after END.
        import sys
        for i in range(event.get("lines", 3)):
            stream = sys.stdout if i % 2 == 0 else sys.stderr
            stream.write("line %d of %s\n" % (i, rid))
            stream.flush()
        sys.stdout.write("no line break")
        sys.stdout.flush()
        call("POST", "invocation/%s/response" % rid, b'"chatted"')
    elif action == "hog":
        # Touches every byte, so the memory is resident, then holds it a moment.
        hog = b"x" * (event["mb"] * 1024 * 1024)
        time.sleep(event.get("hold", 0.2))
        call("POST", "invocation/%s/response" % rid, json.dumps(len(hog)).encode())
        del hog
    elif action == "report":
        call("POST", "invocation/%s/response" % rid, json.dumps({"seen": seen, "pid": os.getpid()}).encode())
    else:
        call("POST", "invocation/%s/error" % rid, b"not json at all",
             {"Lambda-Runtime-Function-Error-Type": "Probe.Unknown"})
