#!/usr/bin/env bash
# Deploy one image to every Weelo ECS service (what .github/workflows/deploy.yml runs):
#   1. render and register weelo-migrate, run it as a one-off task, require exit code 0;
#   2. render and register each service's task definition and point its service at it (a service
#      that does not exist yet, on the very first deployment, only gets its definition registered);
#   3. register weelo-ops (the one-off `weelo ops ...` task operators run, on this image);
#   4. wait until every service is stable, then require that each one's PRIMARY deployment is
#      the new revision with rolloutState COMPLETED (a circuit-breaker rollback also ends
#      "stable", on the old revision, and must fail the deploy).
# Needs IMAGE plus the names stack-outputs.sh prints (each task's own role among them), and AWS
# credentials. CPU_ARCHITECTURE (X86_64 or ARM64) and COLLECTOR_IMAGE are optional
# (render_task_definition.py has their defaults).
set -euo pipefail
roles=(GATEWAY_TASK_ROLE_ARN BROADCAST_TASK_ROLE_ARN ACCEPTANCE_TASK_ROLE_ARN TIMER_TASK_ROLE_ARN
  PRESENCE_TASK_ROLE_ARN FANOUT_TASK_ROLE_ARN MIGRATE_TASK_ROLE_ARN OPS_TASK_ROLE_ARN)
for name in IMAGE AWS_REGION CLUSTER SECRET_ARN JWT_SECRET_ARN EXECUTION_ROLE_ARN LOG_GROUP \
  SUBNETS SECURITY_GROUP "${roles[@]}"; do
  : "${!name:?$name is not set}"
  export "${name?}"
done
export CPU_ARCHITECTURE="${CPU_ARCHITECTURE:-}" COLLECTOR_IMAGE="${COLLECTOR_IMAGE:-}"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
services=(gateway broadcast acceptance timer presence fanout)

register() {  # register NAME: render deploy/ecs/task-definitions/NAME.json, print the new ARN
  python3 "$here/render_task_definition.py" "$here/task-definitions/$1.json" "$work/$1.json"
  aws ecs register-task-definition --cli-input-json "file://$work/$1.json" \
    --query taskDefinition.taskDefinitionArn --output text
}

migrate() {
  local arn task code
  arn="$(register migrate)"
  echo "migrate: running $arn"
  task="$(aws ecs run-task --cluster "$CLUSTER" --task-definition "$arn" --launch-type FARGATE \
    --count 1 --started-by weelo-deploy \
    --network-configuration "awsvpcConfiguration={subnets=[$SUBNETS],securityGroups=[$SECURITY_GROUP],assignPublicIp=DISABLED}" \
    --query 'tasks[0].taskArn' --output text)"
  if [ -z "$task" ] || [ "$task" = "None" ]; then
    echo "migrate: the task did not start" >&2
    return 1
  fi
  aws ecs wait tasks-stopped --cluster "$CLUSTER" --tasks "$task"
  code="$(aws ecs describe-tasks --cluster "$CLUSTER" --tasks "$task" \
    --query 'tasks[0].containers[0].exitCode' --output text)"
  if [ "$code" != "0" ]; then
    echo "migrate: exit code $code; see the log stream migrate/ in $LOG_GROUP" >&2
    return 1
  fi
}

deploy_services() {
  local service arn status
  : > "$work/deployed"
  for service in "${services[@]}"; do
    arn="$(register "$service")"
    status="$(aws ecs describe-services --cluster "$CLUSTER" --services "weelo-$service" \
      --query 'services[0].status' --output text)"
    if [ "$status" != "ACTIVE" ]; then
      # First deployment: the stack creates the services (CreateServices=true) from these.
      echo "weelo-$service: no service yet; registered $arn only"
      continue
    fi
    aws ecs update-service --cluster "$CLUSTER" --service "weelo-$service" \
      --task-definition "$arn" --query 'service.serviceName' --output text
    echo "$service $arn" >> "$work/deployed"
  done
}

verify_services() {
  local service arn primary state failed=0 names=()
  while read -r service arn; do names+=("weelo-$service"); done < "$work/deployed"
  [ "${#names[@]}" -gt 0 ] || return 0
  aws ecs wait services-stable --cluster "$CLUSTER" --services "${names[@]}"
  while read -r service arn; do
    read -r primary state < <(aws ecs describe-services --cluster "$CLUSTER" \
      --services "weelo-$service" --output text \
      --query "services[0].deployments[?status=='PRIMARY'] | [0].[taskDefinition, rolloutState]")
    if [ "$primary" != "$arn" ] || [ "$state" != "COMPLETED" ]; then
      echo "weelo-$service: not settled on $arn (primary $primary, $state): rolled back?" >&2
      failed=1
    else
      echo "weelo-$service: stable on $arn"
    fi
  done < "$work/deployed"
  return "$failed"
}

migrate
deploy_services
echo "ops: registered $(register ops)"
verify_services
