"""Two real gateways across a JWT rotation by the stack's own rotation Lambda, against moto's
Secrets Manager: every token one gateway issues is accepted by the other, before, during and
after the rotation (issue 13, item 9)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import types
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cfnlint.decode import cfn_yaml

from libs.runtime.tokens import InvalidToken, issue, verify
from tests.deploy.conftest import ROOT
from tests.processes import environment, free_port, start_service, stop_all, wait_healthy

# WEELO_SECRETS_REFRESH_SECONDS of both gateways: they check the keys every 0.5 s, and a new key
# signs once it is 4.5 s old.
REFRESH_S = 2
ACTIVE = "/v1/customers/me/broadcasts/active"
STEPS = ("createSecret", "setSecret", "testSecret", "finishSecret")
ROUNDS_AFTER = 30  # rounds to keep going once both gateways sign with the new keys
DEADLINE_S = 60.0


def rotation_lambda() -> types.ModuleType:
    """The rotation Lambda's code, taken from deploy/ecs/stack.yaml as CloudFormation deploys it."""
    template = cfn_yaml.load(str(ROOT / "deploy" / "ecs" / "stack.yaml"))
    code = template["Resources"]["JwtRotationFunction"]["Properties"]["Code"]["ZipFile"]
    module = types.ModuleType("jwt_rotation")
    exec(compile(str(code), "stack.yaml#JwtRotationFunction", "exec"), module.__dict__)
    return module


def rotate(secretsmanager: Any, arn: str) -> None:
    """Run the Lambda's four steps as Secrets Manager does on `rotate-secret`."""
    function, token = rotation_lambda(), str(uuid.uuid4())
    for step in STEPS:
        event = {"SecretId": arn, "ClientRequestToken": token, "Step": step}
        function.handler(event, None, client=secretsmanager)


def current(secretsmanager: Any, arn: str) -> dict[str, str]:
    value = secretsmanager.get_secret_value(SecretId=arn, VersionStage="AWSCURRENT")
    return dict(json.loads(value["SecretString"]))


@contextlib.contextmanager
def gateways(env: dict[str, str], logs: Path, count: int) -> Iterator[list[str]]:
    """`count` gateway processes started one after another (as a rolling start does), their
    URLs; stopped afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    try:
        for n in range(count):
            port = free_port()
            log = logs / f"gateway-{n}.log"
            procs.append(start_service("gateway", {**env, "GATEWAY_PORT": str(port)}, log))
            wait_healthy(port, procs[-1])
            urls.append(f"http://127.0.0.1:{port}")
        yield urls
    finally:
        stop_all(procs)


@dataclass
class Client:
    """A user bouncing between the gateways: each request carries a token the other issued."""

    urls: list[str]
    refresh_token: str
    http: httpx.Client
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    rounds: int = 0

    def round(self) -> tuple[str, str]:
        """Refresh at one gateway, call the API with the new access token at the other; the
        pair issued."""
        here, there = self.urls[self.rounds % 2], self.urls[(self.rounds + 1) % 2]
        self.rounds += 1
        body = {"refreshToken": self.refresh_token}
        refreshed = self.http.post(f"{here}/v1/auth/refresh", json=body)
        self.statuses["refresh", refreshed.status_code] += 1
        if refreshed.status_code != 200:
            return "", ""
        access, self.refresh_token = (
            refreshed.json()["accessToken"],
            refreshed.json()["refreshToken"],
        )
        called = self.http.get(there + ACTIVE, headers={"Authorization": f"Bearer {access}"})
        self.statuses["api", called.status_code] += 1
        return access, self.refresh_token


def signed_with(token: str, key: str) -> bool:
    try:
        verify(token, [key])
    except InvalidToken:
        return False
    return True


def run_until(client: Client, done: Callable[[str, str], bool]) -> None:
    """Rounds until `done(access, refresh)` held for both gateways, then `ROUNDS_AFTER` more."""
    deadline, settled = time.monotonic() + DEADLINE_S, 0
    while settled < 2 + ROUNDS_AFTER:
        if time.monotonic() > deadline:
            pytest.fail(f"not done within {DEADLINE_S} s: {dict(client.statuses)}")
        access, refresh = client.round()
        settled = settled + 1 if access and done(access, refresh) else 0


def test_no_request_is_refused_across_a_rotation(
    cli_env: dict[str, str],
    service_env: dict[str, str],
    make_secret: Callable[[Any], str],
    secretsmanager: Any,
    tmp_path: Path,
) -> None:
    """Across a rotation, tokens issued by either gateway are accepted by the other (no 401),
    both end up signing with the new keys, and a token of the replaced key stays valid."""
    first = {"JWT_SECRET": "first-access-key-" + "a" * 40, "JWT_REFRESH_SECRET": "r" * 48}
    arn = make_secret(first)
    secretsmanager.rotate_secret(
        SecretId=arn, RotationRules={"AutomaticallyAfterDays": 30}, RotateImmediately=False
    )
    env = environment(
        {**service_env, **cli_env},
        WEELO_SECRETS_ID=arn,
        WEELO_SECRETS_REFRESH_SECONDS=str(REFRESH_S),
        RATE_LIMIT_PER_MINUTE="100000",
    )
    sub = f"c-{uuid.uuid4().hex[:8]}"
    old_access = issue(first["JWT_SECRET"], role="customer", sub=sub, ttl_s=600)
    refresh = issue(first["JWT_REFRESH_SECRET"], role="customer", sub=sub, ttl_s=600)
    with gateways(env, tmp_path, 2) as urls, httpx.Client(timeout=10.0) as http:
        client = Client(urls, refresh, http)
        run_until(client, lambda access, _: signed_with(access, first["JWT_SECRET"]))

        rotate(secretsmanager, arn)
        new = current(secretsmanager, arn)
        run_until(
            client,
            lambda access, refresh: (
                signed_with(access, new["JWT_SECRET"])
                and signed_with(refresh, new["JWT_REFRESH_SECRET"])
            ),
        )
        still = [
            http.get(url + ACTIVE, headers={"Authorization": f"Bearer {old_access}"})
            for url in urls
        ]
    assert set(client.statuses) == {("refresh", 200), ("api", 404)}, dict(client.statuses)
    assert [r.status_code for r in still] == [404, 404]
