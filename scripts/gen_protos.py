"""Generate Python code (and mypy stubs) from proto/ into shardbank/v1/.

Generated files are never committed nor edited: they are made at build time
by this script (called by ./run, .ci/run, and lazily by shardbank.v1 on first
import). Output goes to a temporary directory first and is moved into place
file by file, so processes that import concurrently never see half a file.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT_PACKAGE = ROOT / "shardbank" / "v1"


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "shardbank" / "v1").glob("*.proto"))


def generate() -> None:
    import grpc_tools
    from grpc_tools import protoc  # imported here: only needed at build time

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    with tempfile.TemporaryDirectory(dir=ROOT / "shardbank") as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
        ]
        plugin = _mypy_plugin()
        if plugin is not None:
            args += [
                f"--plugin=protoc-gen-mypy={plugin}",
                f"--plugin=protoc-gen-mypy_grpc={plugin.with_name('protoc-gen-mypy_grpc')}",
                f"--mypy_out={tmp}",
                f"--mypy_grpc_out={tmp}",
            ]
        args += [str(p) for p in proto_files()]
        code = protoc.main(args)
        if code != 0:
            raise SystemExit(f"protoc failed with exit code {code}")
        generated = Path(tmp) / "shardbank" / "v1"
        for path in sorted(generated.iterdir()):
            os.replace(path, OUT_PACKAGE / path.name)


def _mypy_plugin() -> Path | None:
    """mypy-protobuf's plugin, installed beside this interpreter by [dev]."""
    from shutil import which

    local = Path(sys.executable).parent / "protoc-gen-mypy"
    if local.exists():
        return local
    found = which("protoc-gen-mypy")
    return Path(found) if found else None


def is_stale() -> bool:
    """True when any .proto is newer than its generated module."""
    for proto in proto_files():
        module = OUT_PACKAGE / f"{proto.stem}_pb2.py"
        if not module.exists() or module.stat().st_mtime < proto.stat().st_mtime:
            return True
    return False


if __name__ == "__main__":
    generate()
    print(f"generated {len(proto_files())} protos into {OUT_PACKAGE.relative_to(ROOT)}")
