"""Build the dbt manifest Cosmos renders the events DAG from (`make setup` runs this).

``python -m orchestration.manifest`` runs ``dbt parse`` on the project with a stand-in profile
(parsing opens no connection, so no Spark is needed) into ``dbt_project/target/airflow``, with
the vars every run gets (the goals catalogue: ``strata.contracts.dbt_vars``).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt_project"
TARGET_DIR = DBT_PROJECT_DIR / "target" / "airflow"

_PROFILE = """strata:
  target: local
  outputs:
    local: {type: spark, method: session, host: NA, schema: strata, threads: 1}
"""


def build(target_dir: Path = TARGET_DIR) -> Path:
    """Parse the dbt project into ``target_dir``; returns the manifest's path."""
    from dbt.cli.main import dbtRunner

    from strata.contracts import dbt_vars

    with tempfile.TemporaryDirectory(prefix="strata-dbt-profile-") as profiles:
        (Path(profiles) / "profiles.yml").write_text(_PROFILE)
        result = dbtRunner().invoke(
            [
                "parse",
                "--project-dir", str(DBT_PROJECT_DIR),
                "--profiles-dir", profiles,
                "--target-path", str(target_dir),
                "--vars", json.dumps(dbt_vars()),
                "--no-partial-parse",
                "--quiet",
            ]
        )  # fmt: skip
    if not result.success:
        raise RuntimeError(f"dbt parse failed: {result.exception}")
    return target_dir / "manifest.json"


def graph(manifest: Path) -> dict[str, Any]:
    """What rendering depends on: each node's checksum, dependencies and config, by id."""
    data = json.loads(manifest.read_text())
    return {
        uid: {
            "checksum": node.get("checksum", {}).get("checksum"),
            "depends_on": sorted(node.get("depends_on", {}).get("nodes", [])),
            "config": json.dumps(node.get("config", {}), sort_keys=True, default=str),
        }
        for uid, node in data["nodes"].items()
    }


if __name__ == "__main__":
    path = build(Path(sys.argv[1]) if len(sys.argv) > 1 else TARGET_DIR)
    print(f"dbt manifest: {path}")
