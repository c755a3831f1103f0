"""checkov on deploy/ecs/stack.yaml, as scripts/lint-deploy.sh runs it: the stack passes every
check it does not skip, each skip in deploy/checkov.yaml says why, and a setting checkov guards
(but no Weelo rule does) is caught when dropped."""

from __future__ import annotations

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


def run_checkov(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECKOV), "--config-file", str(CONFIG), "--file", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        cwd=ROOT,
    )


@pytest.mark.process
def test_checkov_passes_on_the_stack() -> None:
    """Every checkov CloudFormation check the config does not skip passes on the stack."""
    result = run_checkov(STACK)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Passed checks:" in result.stdout


@pytest.mark.process
def test_checkov_catches_a_dropped_setting(tmp_path: Path) -> None:
    """Without the load balancer's drop-invalid-header-fields attribute (no Weelo rule checks
    it), checkov fails the stack with CKV_AWS_131."""
    text = STACK.read_text()
    line = '        - {Key: routing.http.drop_invalid_header_fields.enabled, Value: "true"}\n'
    assert text.count(line) == 1
    path = tmp_path / "stack.yaml"
    path.write_text(text.replace(line, ""))
    result = run_checkov(path)
    assert result.returncode != 0
    assert "CKV_AWS_131" in result.stdout


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
