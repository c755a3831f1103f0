#!/usr/bin/env bash
# Print the Weelo stack's outputs as NAME=value lines (for $GITHUB_ENV, or `export $(...)`):
# the values deploy.sh and render_task_definition.py need. None of them is a secret.
#   WEELO_STACK_NAME=weelo AWS_REGION=ap-south-1 deploy/ecs/stack-outputs.sh
set -euo pipefail
: "${WEELO_STACK_NAME:?set WEELO_STACK_NAME}" "${AWS_REGION:?set AWS_REGION}"

aws cloudformation describe-stacks --region "$AWS_REGION" --stack-name "$WEELO_STACK_NAME" \
  --query 'Stacks[0].Outputs' --output json \
  | python3 -c '
import json, sys
names = {
    "RepositoryUri": "REPOSITORY_URI",
    "ClusterName": "CLUSTER",
    "AppSecretArn": "SECRET_ARN",
    "TaskRoleArn": "TASK_ROLE_ARN",
    "TaskExecutionRoleArn": "EXECUTION_ROLE_ARN",
    "LogGroupName": "LOG_GROUP",
    "PrivateSubnetIds": "SUBNETS",
    "ServiceSecurityGroupId": "SECURITY_GROUP",
}
outputs = {o["OutputKey"]: o["OutputValue"] for o in json.load(sys.stdin) or []}
missing = [key for key in names if not outputs.get(key)]
if missing:
    sys.exit("stack-outputs: the stack has no output " + ", ".join(missing))
for key, name in names.items():
    print(f"{name}={outputs[key]}")
'
