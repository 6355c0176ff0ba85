"""Demo helpers: send a few real device-register requests through the reference endpoint.

The endpoint runs as its own process (``scripts/endpoint.sh``, uvicorn on 127.0.0.1) and answers
from the live Redis version; each served experiment also lands as a seed-004 LOG event in the
exposures landing folder.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from typing import Any

from strata.config import PROJECT_ROOT, Settings, get_settings
from strata.errors import StackError

DEFAULT_ENDPOINT_PORT = 8090


def _sample_units(settings: Settings, n: int) -> list[tuple[str, str | None]]:
    """(device_id, user_id) of the first ``n`` devices that are in some experiment."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyiceberg.expressions import EqualTo

    from strata.stack import iceberg_catalog

    catalog = iceberg_catalog(settings)
    assigned = (
        catalog.load_table(f"{settings.namespace}.assignments")
        .scan(row_filter=EqualTo("unit_type", "device_id"), selected_fields=("unit_id",))
        .to_arrow()
    )
    devices = sorted(set(assigned["unit_id"].to_pylist()))[:n]
    owners = (
        catalog.load_table(f"{settings.namespace}.devices")
        .scan(selected_fields=("device_id", "user_id"))
        .to_arrow()
    )
    owners = owners.filter(pc.is_in(owners["device_id"], value_set=pa.array(devices, pa.string())))
    user_of = dict(zip(owners["device_id"].to_pylist(), owners["user_id"].to_pylist(), strict=True))
    return [(d, user_of.get(d)) for d in devices]


def serve_samples(n: int = 5, settings: Settings | None = None) -> list[dict[str, Any]]:
    """Start the endpoint, POST seed-004 register requests for ``n`` devices, stop it."""
    import httpx

    settings = settings or get_settings()
    if PROJECT_ROOT is None:
        raise StackError("serve_samples needs the repository checkout (scripts/endpoint.sh)")
    script = str(PROJECT_ROOT / "scripts" / "endpoint.sh")
    port = int(os.environ.get("STRATA_ENDPOINT_PORT", DEFAULT_ENDPOINT_PORT))
    env = {**os.environ, "STRATA_HOME": str(settings.home), "STRATA_ENDPOINT_PORT": str(port)}
    subprocess.run([script, "start"], check=True, env=env, capture_output=True)
    answers = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for device_id, user_id in _sample_units(settings, n):
                body = {
                    "id": "strata.device.register",
                    "ver": "1.0",
                    "ts": "2026-11-14T12:00:00Z",
                    "params": {"msgid": str(uuid.uuid4())},
                    "request": {
                        "did": device_id,
                        "channel": "demo",
                        "ext": {"userid": user_id or ""},
                    },
                }
                response = client.post(f"/v1/device/register/{device_id}", json=body)
                response.raise_for_status()
                actions = response.json()["result"]["actions"]
                answers.append(
                    {
                        "device_id": device_id,
                        "user_id": user_id,
                        "experiments": [
                            f"{a['data']['id']}={a['data']['variantName']}"
                            for a in actions
                            if a["type"] == "experiment"
                        ],
                    }
                )
    finally:
        subprocess.run([script, "stop"], check=False, env=env, capture_output=True)
    return answers
