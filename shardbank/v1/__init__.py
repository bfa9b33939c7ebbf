"""Generated protobuf/gRPC code for the shardbank.v1 proto package.

The modules here are produced from proto/ by scripts/gen_protos.py and are not
in git. A checkout that has not generated them yet (e.g. after a bare
`pip install -e .`) generates them on first import, so every entry point works.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_SCRIPT = _HERE.parent.parent / "scripts" / "gen_protos.py"

if _SCRIPT.exists() and os.environ.get("SHARDBANK_NO_PROTO_GEN") != "1":
    sys.path.insert(0, str(_SCRIPT.parent))
    try:
        import gen_protos

        if gen_protos.is_stale():
            gen_protos.generate()
    finally:
        sys.path.remove(str(_SCRIPT.parent))
