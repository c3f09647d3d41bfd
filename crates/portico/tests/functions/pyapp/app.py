"""A Python function run by the official awslambdaric client: it reports what Lambda's
context and environment told it, answers the load balancer like an ALB target, and fails on
request."""

import json
import logging
import os
import resource
import time
import uuid

import helper  # A second module of the package: the code directory is importable.

logger = logging.getLogger()
logger.setLevel(logging.INFO)
COLD = {"start": True}
# Which execution environment answered: in a sandbox every runtime is the same PID.
PROCESS = uuid.uuid4().hex


def handler(event, context):
    cold = COLD["start"]
    COLD["start"] = False
    print("handling", context.aws_request_id)
    logger.info("logged through logging")
    if event.get("fail"):
        raise ValueError(event["fail"])
    if "sleep" in event:
        started = time.time()
        time.sleep(event["sleep"])
        return {"process": PROCESS, "started": started, "ended": time.time()}
    report = {
        "request_id": context.aws_request_id,
        "function_name": context.function_name,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "invoked_function_arn": context.invoked_function_arn,
        "remaining_ms_positive": context.get_remaining_time_in_millis() > 0,
        "client_context": getattr(context.client_context, "custom", None),
        "handler": os.environ.get("_HANDLER"),
        "task_root": os.environ.get("LAMBDA_TASK_ROOT"),
        "cwd": os.getcwd(),
        "files": sorted(os.listdir(os.environ.get("LAMBDA_TASK_ROOT", "."))),
        "runtime_has_client": os.path.isdir(
            os.path.join(os.environ.get("LAMBDA_RUNTIME_DIR", ""), "awslambdaric")
        ),
        "open_files_limit": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "env": {
            k: v
            for k, v in os.environ.items()
            if k.startswith(("AWS_", "LAMBDA_", "PYTHONPATH", "PORTICO_", "_X_AMZN_TRACE_ID"))
        },
        "helper": helper.NAME,
        "cold": cold,
        "event": event,
    }
    if "requestContext" in event:  # Called by the load balancer.
        return {
            "statusCode": 201,
            "statusDescription": "201 Created",
            "headers": {"content-type": "application/json", "x-runtime": "python"},
            "body": json.dumps(report),
            "isBase64Encoded": False,
        }
    return report
