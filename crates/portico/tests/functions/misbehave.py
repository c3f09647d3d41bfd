"""A Lambda function that speaks the Runtime API itself (Python stdlib only) and misbehaves
when asked, by request path: /crash exits, /garbage replies with non-JSON, /slow outlives its
timeout, /big replies with 2 MB, /raise reports an error. Anything else answers 200 with the
process id, so tests can tell a reused environment from a replaced one."""

import json
import os
import time
import urllib.request
import uuid

# Which execution environment answered: in a sandbox every runtime is the same PID.
PROCESS = uuid.uuid4().hex
API = "http://%s/2018-06-01/runtime/invocation/" % os.environ["AWS_LAMBDA_RUNTIME_API"]


def post(url, body, headers=None):
    req = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        urllib.request.urlopen(req).read()
    except urllib.error.HTTPError as e:
        e.read()


def reply(status, body):
    return json.dumps({"statusCode": status, "headers": {"content-type": "text/plain"}, "body": body}).encode()


while True:
    with urllib.request.urlopen(API + "next") as r:
        request_id = r.headers["Lambda-Runtime-Aws-Request-Id"]
        event = json.load(r)
    path = event.get("path", "")
    if path == "/crash":
        os._exit(3)
    elif path == "/garbage":
        post(API + request_id + "/response", b"this is not json")
    elif path == "/slow":
        time.sleep(5)
        post(API + request_id + "/response", reply(200, "too late"))
    elif path == "/big":
        post(API + request_id + "/response", reply(200, "x" * (2 * 1024 * 1024)))
    elif path == "/raise":
        doc = json.dumps({"errorMessage": "asked to raise", "errorType": "ValueError", "stackTrace": []})
        post(API + request_id + "/error", doc.encode(), {"Lambda-Runtime-Function-Error-Type": "ValueError"})
    else:
        post(API + request_id + "/response", reply(200, "process " + PROCESS))
