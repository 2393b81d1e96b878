#!/usr/bin/env bash
# Build the FaceFleet images and push them to the stack's ECR repositories:
#   worker  (packages/infra/docker/Dockerfile)        -> output RepositoryUri
#   flows   (packages/infra/docker/Dockerfile.flows)  -> output FlowsRepositoryUri
#   packages/infra/docker/build-push.sh [TAG] [worker|flows|all]   (default: git short hash, all)
# Needs docker (with buildx), the AWS CLI and credentials for the account; run from anywhere.
# The repository URIs come from the stack outputs (stack: $STACK_NAME, default facefleet).
# Then deploy the tags:  facefleet infra apply ... --image-tag TAG  (worker; the flows image
# tag is the `flows_image_tag` config field) and `facefleet flows deploy --production`.
set -euo pipefail

root="$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
region="${AWS_DEFAULT_REGION:-${AWS_REGION:-us-east-1}}"
stack="${STACK_NAME:-facefleet}"
tag="${1:-$(git -C "$root" rev-parse --short HEAD)}"
which="${2:-all}"

output() {
  aws cloudformation describe-stacks --region "$region" --stack-name "$stack" \
    --query "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue" --output text
}

build_push() {  # DOCKERFILE OUTPUT_KEY
  local repository registry
  repository="$(output "$2")"
  registry="${repository%%/*}"
  aws ecr get-login-password --region "$region" | \
    docker login --username AWS --password-stdin "$registry"
  docker buildx build --platform linux/amd64 -f "$root/packages/infra/docker/$1" \
    -t "$repository:$tag" --push "$root"
  echo "pushed $repository:$tag"
}

case "$which" in
  worker) build_push Dockerfile RepositoryUri ;;
  flows) build_push Dockerfile.flows FlowsRepositoryUri ;;
  all) build_push Dockerfile RepositoryUri; build_push Dockerfile.flows FlowsRepositoryUri ;;
  *) echo "usage: $0 [TAG] [worker|flows|all]" >&2; exit 2 ;;
esac
