#!/usr/bin/env bash
# Build the FaceFleet worker image and push it to the stack's ECR repository.
#   packages/infra/docker/build-push.sh [TAG]        (default TAG: the git commit, short)
# Needs docker (with buildx), the AWS CLI and credentials for the account; run from anywhere.
# The repository URI comes from the stack output RepositoryUri (stack: $STACK_NAME, default
# facefleet). Then deploy the tag:  facefleet infra apply ... --image-tag TAG
set -euo pipefail

root="$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
region="${AWS_DEFAULT_REGION:-${AWS_REGION:-us-east-1}}"
stack="${STACK_NAME:-facefleet}"
tag="${1:-$(git -C "$root" rev-parse --short HEAD)}"

repository="$(aws cloudformation describe-stacks --region "$region" --stack-name "$stack" \
  --query "Stacks[0].Outputs[?OutputKey=='RepositoryUri'].OutputValue" --output text)"
registry="${repository%%/*}"

aws ecr get-login-password --region "$region" | docker login --username AWS --password-stdin "$registry"
docker buildx build --platform linux/amd64 -f "$root/packages/infra/docker/Dockerfile" \
  -t "$repository:$tag" --push "$root"
echo "pushed $repository:$tag"
