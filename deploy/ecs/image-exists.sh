#!/usr/bin/env bash
# Whether ECR already holds the image tag IMAGE_TAG in REPOSITORY_URI's repository: prints
# exists=true or exists=false (a line for $GITHUB_OUTPUT). The repository's tags are immutable,
# so a deploy re-run for a commit already built must not build and push again (the push would be
# refused); it deploys the image that is there. Any other failure (no access, no such repository,
# no network) is an error, never "false".
#   REPOSITORY_URI=123456789012.dkr.ecr.ap-south-1.amazonaws.com/weelo IMAGE_TAG=<sha> \
#     AWS_REGION=ap-south-1 deploy/ecs/image-exists.sh
set -euo pipefail
: "${REPOSITORY_URI:?}" "${IMAGE_TAG:?}" "${AWS_REGION:?}"
registry="${REPOSITORY_URI%%/*}"
repository="${REPOSITORY_URI#*/}"
errors="$(mktemp)"
trap 'rm -f "$errors"' EXIT

if digest="$(aws ecr describe-images --region "$AWS_REGION" --registry-id "${registry%%.*}" \
  --repository-name "$repository" --image-ids "imageTag=$IMAGE_TAG" \
  --query 'imageDetails[0].imageDigest' --output text 2>"$errors")"; then
  echo "image-exists: $REPOSITORY_URI:$IMAGE_TAG is already there ($digest)" >&2
  echo "exists=true"
elif grep -q ImageNotFoundException "$errors"; then
  echo "image-exists: $REPOSITORY_URI:$IMAGE_TAG is not there yet" >&2
  echo "exists=false"
else
  cat "$errors" >&2
  echo "image-exists: cannot tell whether $REPOSITORY_URI:$IMAGE_TAG exists" >&2
  exit 1
fi
