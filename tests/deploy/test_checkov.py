"""checkov on deploy/ecs/stack.yaml, as scripts/lint-deploy.sh runs it: the stack passes every
check it does not skip, each skip in deploy/checkov.yaml says why, and a setting checkov guards
(but no Weelo rule does) is caught when dropped."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import ROOT
from tests.deploy.stack_template import STACK

CONFIG = ROOT / "deploy" / "checkov.yaml"
CHECKOV = Path(sys.executable).parent / "checkov"


DROPPED = '        - {Key: routing.http.drop_invalid_header_fields.enabled, Value: "true"}\n'


@pytest.fixture(scope="module")
def failed_checks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """One checkov run (its start alone takes seconds) on the stack and on a copy without the
    load balancer's drop-invalid-header-fields attribute, which no Weelo rule checks: the ids of
    the checks that failed, by file ("stack", "weakened")."""
    text = STACK.read_text()
    assert text.count(DROPPED) == 1
    weakened = tmp_path_factory.mktemp("checkov") / "weakened.yaml"
    weakened.write_text(text.replace(DROPPED, ""))
    files = ["--file", str(STACK), "--file", str(weakened)]
    result = subprocess.run(
        [str(CHECKOV), "--config-file", str(CONFIG), *files, "--output", "json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        cwd=ROOT,
    )
    report = json.loads(result.stdout)
    assert report["summary"]["passed"] > 0, result.stderr[-2000:]
    failed: dict[str, set[str]] = {"stack": set(), "weakened": set()}
    for check in report["results"]["failed_checks"]:
        name = "weakened" if Path(check["file_path"]).name == weakened.name else "stack"
        failed[name].add(check["check_id"])
    return failed


@pytest.mark.process
def test_checkov_passes_on_the_stack(failed_checks: dict[str, set[str]]) -> None:
    """Every checkov CloudFormation check the config does not skip passes on the stack."""
    assert failed_checks["stack"] == set()


@pytest.mark.process
def test_checkov_catches_a_dropped_setting(failed_checks: dict[str, set[str]]) -> None:
    """Without the load balancer's drop-invalid-header-fields attribute (no Weelo rule checks
    it), checkov fails the stack with CKV_AWS_131, and with nothing else."""
    assert failed_checks["weakened"] == {"CKV_AWS_131"}


def test_every_skipped_check_says_why() -> None:
    """Each check deploy/checkov.yaml skips has a comment just above it naming it and giving
    the reason, and the config scans CloudFormation offline."""
    text = CONFIG.read_text()
    config = yaml.safe_load(text)
    assert config["framework"] == ["cloudformation"]
    assert config["skip-download"] is True
    skipped = config["skip-check"]
    assert skipped, "nothing skipped: then drop this test's reason check"
    for check in skipped:
        name = re.escape(check)
        match = re.search(rf"# {name}: (.+)\n(?: *#.*\n)* *- {name}\n", text)
        assert match and len(match.group(1)) >= 20, check
