"""Builds an OCI image layout of a Lambda function, as `buildah push oci:DIR` writes one:
a gzip base layer with a shell and the shared libraries the function needs (copied from
this host), and a plain layer with the function as the base images' /var/runtime/bootstrap,
their /lambda-entrypoint.sh, and a whiteout of a base-layer file. Also writes a tar of the
layout (the `oci-archive` form) and the image as `docker save` writes it.

usage: build.py FUNCTION_BINARY OUT_DIR"""

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

binary, out = sys.argv[1], sys.argv[2]

ENTRYPOINT = b"""#!/bin/sh
# The Lambda base images' entrypoint: the runtime interface emulator when run alone, the
# runtime's bootstrap when Lambda (here portico) gives it a Runtime API.
if [ $# -ne 1 ]; then
  echo "entrypoint requires the handler name to be the first argument" 1>&2
  exit 142
fi
export _HANDLER="$1"
while read -r key value rest; do
  if [ "$key" = "Uid:" ]; then uid="$value"; fi
done < /proc/self/status
echo "entrypoint: handler=$_HANDLER image_var=$IMAGE_VAR cwd=$(pwd) uid=$uid"
if [ -z "${AWS_LAMBDA_RUNTIME_API}" ]; then
  exec /usr/local/bin/aws-lambda-rie /var/runtime/bootstrap "$@"
else
  exec /var/runtime/bootstrap "$@"
fi
"""


def libraries(program):
    """The shared libraries `program` loads, by the paths it loads them from."""
    found = []
    for line in subprocess.run(["ldd", program], capture_output=True, text=True).stdout.splitlines():
        parts = line.split()
        for part in parts:
            if part.startswith("/"):
                found.append(part)
                break
    return found


def add_file(tar, name, data, mode=0o755):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def add_dir(tar, name):
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tar.addfile(info)


def layer(build):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        build(tar)
    return buffer.getvalue()


def base(tar):
    made = set()
    for program in ["/bin/sh", binary]:
        for lib in libraries(program):
            if lib in made:
                continue
            made.add(lib)
            parts = lib.strip("/").split("/")
            for i in range(1, len(parts)):
                directory = "/".join(parts[:i])
                if directory not in made:
                    made.add(directory)
                    add_dir(tar, directory)
            with open(os.path.realpath(lib), "rb") as f:
                add_file(tar, lib.strip("/"), f.read())
    add_dir(tar, "bin")
    with open(os.path.realpath("/bin/sh"), "rb") as f:
        add_file(tar, "bin/sh", f.read())
    add_dir(tar, "var")
    add_dir(tar, "var/task")
    add_file(tar, "var/task/stale.txt", b"removed by the next layer", 0o644)


def function(tar):
    add_dir(tar, "var")
    add_dir(tar, "var/runtime")
    with open(binary, "rb") as f:
        add_file(tar, "var/runtime/bootstrap", f.read())
    add_file(tar, "lambda-entrypoint.sh", ENTRYPOINT)
    add_dir(tar, "var/task")
    add_file(tar, "var/task/.wh.stale.txt", b"", 0o644)
    add_file(tar, "var/task/app.txt", b"the function's files", 0o644)


blobs = os.path.join(out, "layout", "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)


def put(data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest), "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + digest, "size": len(data)}


base_layer = gzip.compress(layer(base))
function_layer = layer(function)
config = {
    "architecture": "amd64",
    "os": "linux",
    "config": {
        "Entrypoint": ["/lambda-entrypoint.sh"],
        "Cmd": ["echo.handler"],
        "WorkingDir": "/var/task",
        "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "IMAGE_VAR=from-image"],
    },
    "rootfs": {"type": "layers", "diff_ids": []},
}
manifest = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": dict(put(json.dumps(config).encode()), mediaType="application/vnd.oci.image.config.v1+json"),
    "layers": [
        dict(put(base_layer), mediaType="application/vnd.oci.image.layer.v1.tar+gzip"),
        dict(put(function_layer), mediaType="application/vnd.oci.image.layer.v1.tar"),
    ],
}
index = {
    "schemaVersion": 2,
    "manifests": [dict(put(json.dumps(manifest).encode()), mediaType="application/vnd.oci.image.manifest.v1+json")],
}
with open(os.path.join(out, "layout", "index.json"), "w") as f:
    json.dump(index, f)
with open(os.path.join(out, "layout", "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
with tarfile.open(os.path.join(out, "image.tar"), "w") as tar:
    tar.add(os.path.join(out, "layout"), arcname=".")

# The same image as `docker save` writes it: manifest.json, the config, uncompressed layers.
with tarfile.open(os.path.join(out, "docker.tar"), "w") as tar:
    # Another configuration (a label), so that this image is unpacked on its own.
    config_bytes = json.dumps(dict(config, config=dict(config["config"], Labels={"saved": "docker"}))).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    add_file(tar, config_name, config_bytes, 0o644)
    names = []
    for data in (layer(base), function_layer):
        name = hashlib.sha256(data).hexdigest() + "/layer.tar"
        add_dir(tar, name.split("/")[0])
        add_file(tar, name, data, 0o644)
        names.append(name)
    manifest_json = [{"Config": config_name, "RepoTags": ["fn:latest"], "Layers": names}]
    add_file(tar, "manifest.json", json.dumps(manifest_json).encode(), 0o644)
