"""A Lambda target for ALB health check tests (run by awslambdaric): it appends every event
to the file EVENTS_FILE names, and answers with the status written in STATUS_FILE (200 while
that file does not exist)."""

import json
import os


def handler(event, context):
    with open(os.environ["EVENTS_FILE"], "a") as events:
        events.write(json.dumps(event) + "\n")
    try:
        with open(os.environ["STATUS_FILE"]) as f:
            status = int(f.read().strip())
    except FileNotFoundError:
        status = 200
    return {
        "statusCode": status,
        "statusDescription": f"{status} Health",
        "headers": {"content-type": "text/plain"},
        "body": "checked",
        "isBase64Encoded": False,
    }
