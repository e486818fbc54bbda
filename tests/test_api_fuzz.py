"""schemathesis (from PyPI) fuzzes the agent API from its served OpenAPI document; any failure fails the suite.

The API runs as `stackyard api` serves it, over a real PostgreSQL seeded so
that generated event bodies can reach the store: a second run uses a copy of
the document whose `deploymentObjectId` is one of the calling agent's real
deployment object ids. Fixed seed and bounded examples keep it reproducible
and under two minutes.
"""

from __future__ import annotations

import asyncio
import copy
import json
import sys
from pathlib import Path

from stackyard.api import schemas

from .api_harness import make_agent, make_stack, running_api

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
SEED = 20261123


async def _fuzz(location: str, url: str, token: str, tmp_path: Path, *extra: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS), "run", location, "--url", url, "--checks", "all", "--seed", str(SEED),
        "--max-examples", "25", "--header", f"Authorization: Bearer {token}", "--no-color", "--workers", "2",
        "--generation-database", "none", "--report-dir", str(tmp_path / "report"), "--max-time", "40", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=str(tmp_path),
    )
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode(errors="replace")


async def test_schemathesis_finds_no_failure(db_url, tmp_path, db):
    async with running_api(db_url, max_wait_seconds=2) as api:  # short long-polls: the fuzzer waits for each call
        agent_id, token = await make_agent(api.store, "edge")
        dos = [str((await make_stack(api.store, f"ns/s{i}", f"a: {i}\n", targets=[("edge", "eu-1")]))[1])
               for i in range(3)]
        code, output = await _fuzz(f"{api.url}/api/v1/openapi.json", api.url, token, tmp_path)
        assert code == 0, output[-6000:]

        document = copy.deepcopy(schemas.openapi_document("fuzz", max_wait_seconds=2))
        event = document["paths"]["/api/v1/agents/self/events"]["post"]["requestBody"]["content"]["application/json"]
        items = event["schema"]["properties"]["events"]["items"]
        items["properties"]["deploymentObjectId"] = {"type": "string", "enum": dos}
        seeded = tmp_path / "seeded.json"
        seeded.write_text(json.dumps(document))
        code, output = await _fuzz(str(seeded), api.url, token, tmp_path, "--include-path", "/api/v1/agents/self/events",
                                   "--mode", "positive")
        assert code == 0, output[-6000:]
    stored = db.execute("SELECT count(*) FROM agent_events WHERE agent_id = %s", (agent_id,)).fetchone()[0]
    assert stored > 0, "generated events reached the store"
