"""The manifest Cosmos renders from is the project as it is: a stale one fails here.

`make setup` rebuilds it whenever a dbt file changes; this catches a manifest left behind (an
edited model, test or config without `make setup`), which would render yesterday's graph.
"""

from __future__ import annotations

import json


def test_shipped_manifest_matches_a_fresh_parse(tmp_path):
    from orchestration.manifest import TARGET_DIR, build, graph

    shipped = TARGET_DIR / "manifest.json"
    assert shipped.is_file(), "run `make setup`: it builds the dbt manifest"
    fresh = graph(build(tmp_path))
    stale = {
        uid: sorted(
            k
            for k in set(fresh.get(uid, {})) | set(node)
            if fresh.get(uid, {}).get(k) != node.get(k)
        )
        for uid, node in graph(shipped).items()
        if fresh.get(uid) != node
    }
    missing = sorted(set(fresh) - set(graph(shipped)))
    assert (stale, missing) == ({}, []), "dbt manifest is stale: run `make setup`"


def test_a_changed_model_makes_the_manifest_stale(tmp_path):
    """The comparison sees an edit: the same project with one model changed differs."""
    import shutil

    from orchestration import manifest

    project = tmp_path / "dbt_project"
    shutil.copytree(manifest.DBT_PROJECT_DIR, project, ignore=shutil.ignore_patterns("target"))
    model = project / "models" / "marts" / "experiments" / "goal_aggregates.sql"
    model.write_text(model.read_text() + "\n-- an edit\n")
    original = manifest.DBT_PROJECT_DIR
    try:
        manifest.DBT_PROJECT_DIR = project
        edited = manifest.graph(manifest.build(tmp_path / "edited"))
    finally:
        manifest.DBT_PROJECT_DIR = original
    shipped = manifest.graph(manifest.TARGET_DIR / "manifest.json")
    uid = "model.strata.goal_aggregates"
    assert edited[uid]["checksum"] != shipped[uid]["checksum"]
    assert json.dumps(edited[uid]["depends_on"]) == json.dumps(shipped[uid]["depends_on"])
