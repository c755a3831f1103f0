#!/usr/bin/env bash
# Print the Weelo stack's outputs as NAME=value lines (for $GITHUB_ENV, or `export $(...)`):
# the values deploy.sh and render_task_definition.py need (one task role per service, the app
# and JWT secrets' ARNs, ...). None of them is a secret.
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
    "TaskFamilyPrefix": "TASK_FAMILY_PREFIX",
    "AppSecretArn": "SECRET_ARN",
    "JwtSecretArn": "JWT_SECRET_ARN",
    "GatewayTaskRoleArn": "GATEWAY_TASK_ROLE_ARN",
    "BroadcastTaskRoleArn": "BROADCAST_TASK_ROLE_ARN",
    "AcceptanceTaskRoleArn": "ACCEPTANCE_TASK_ROLE_ARN",
    "TimerTaskRoleArn": "TIMER_TASK_ROLE_ARN",
    "PresenceTaskRoleArn": "PRESENCE_TASK_ROLE_ARN",
    "FanoutTaskRoleArn": "FANOUT_TASK_ROLE_ARN",
    "MigrateTaskRoleArn": "MIGRATE_TASK_ROLE_ARN",
    "OpsTaskRoleArn": "OPS_TASK_ROLE_ARN",
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
