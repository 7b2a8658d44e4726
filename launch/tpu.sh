#!/usr/bin/env bash
# Launch sdpo_jax on a Cloud TPU VM or pod slice with plain gcloud (no Pathways, no Ray, no ssh by hand).
#
#   launch/tpu.sh [options] COMMAND [-- --config.a.b=v ...]
#
# Commands (each one idempotent; see launch/README.md):
#   create   create the TPU VM (or, with --queued, a queued resource and wait until ACTIVE);
#            skipped when it already exists
#   setup    copy this checkout (or --git URL) to every worker, make a Python 3.11 venv, pip install
#            requirements.txt + jax[tpu]; with --bucket also install gcsfuse
#   run      start `python -m sdpo_jax.main --config=CONFIG [overrides]` on all workers at once
#            (detached, so a dropped connection does not stop training), then stream worker 0's log
#   logs     stream worker 0's log of the current run (Ctrl-C stops streaming, not training)
#   stop     SIGTERM the run on all workers (it saves a checkpoint and exits)
#   delete   delete the TPU VM / queued resource; skipped when it does not exist
#   up       create + setup + run
#
# Options (--opt=value or --opt value):
#   --project=ID       GCP project   (else $CLOUDSDK_CORE_PROJECT, else `gcloud config get-value project`)
#   --zone=ZONE        TPU zone      (else $CLOUDSDK_COMPUTE_ZONE, else `gcloud config get-value compute/zone`)
#   --name=NAME        TPU VM / queued resource name (default: sdpo-jax)
#   --accelerator=T    accelerator type, e.g. v4-8, v5litepod-16, v6e-8 (default: v4-8)
#   --version=V        TPU runtime version (default: picked from the accelerator type)
#   --spot             Spot VM (preemptible; `run` again after re-creating resumes from the checkpoint)
#   --queued           use a queued resource (waits in the queue instead of failing on no capacity)
#   --bucket=B         mount gs://B on every worker with gcsfuse at /mnt/gcs/B; run_dir defaults to
#                      /mnt/gcs/B/runs/RUN_NAME (checkpoints, metrics, TensorBoard all go there)
#   --run-name=R       run name under the bucket (default: the config file's name without .py)
#   --config=PATH      experiment config, relative to the repo root (default: configs/demo.py)
#   --env=KEY=VALUE    environment variable for the run on every worker (repeatable), e.g. HF_TOKEN
#   --git=URL          setup clones URL on the workers instead of copying this checkout
#   --ref=REF          git ref to check out with --git (default: main)
#   --worker=N         worker whose log `logs` streams (default: 0)
#   --no-follow        `run` starts the job and returns without streaming the log
#   --dry-run          print the gcloud commands (shell-quoted, one per line) instead of running them
#   -h, --help         this text
set -eo pipefail   # not -u: empty "${arr[@]}" trips it in macOS's bash 3.2

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REMOTE_DIR=sdpo-jax            # on each worker, relative to the login user's home
# shellcheck disable=SC2088  # the tilde is for the worker's shell to expand
RUN_LOG='~/sdpo-jax-run.log'
# shellcheck disable=SC2088
RUN_PID='~/sdpo-jax-run.pid'

usage() { sed -n '2,/^set -eo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "launch/tpu.sh: error: $*" >&2; exit 2; }
note() { echo "launch/tpu.sh: $*" >&2; }

# One word quoted for a POSIX shell: bare when it holds only safe characters, else in single quotes.
# A --flag=value word keeps --flag= outside the quotes, for readability.
q() {
  if [[ $1 =~ ^[A-Za-z0-9_./=:,@%+-]+$ ]]; then printf '%s' "$1"
  elif [[ $1 =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then printf '%s' "${BASH_REMATCH[1]}"; q "${BASH_REMATCH[2]}"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
qjoin() { local out="" w; for w in "$@"; do out+="${out:+ }$(q "$w")"; done; printf '%s' "$out"; }

# Run one gcloud command, or print it (pasteable) under --dry-run.
gc() {
  if (( DRY_RUN )); then qjoin gcloud "$@"; echo; else gcloud "$@"; fi
}
# Existence checks only run for real; dry-run prints what a fresh project would need.
exists() { (( ! DRY_RUN )) && gcloud "$@" --zone="$ZONE" --project="$PROJECT" --format='value(name)' >/dev/null 2>&1; }

# ---------------------------------------------------------------------------------------------- args
COMMAND="" NAME=sdpo-jax ACCEL=v4-8 VERSION="" SPOT=0 QUEUED=0 BUCKET="" RUN_NAME="" CONFIG=configs/demo.py
GIT_URL="" GIT_REF=main WORKER=0 FOLLOW=1 DRY_RUN=0 PROJECT="" ZONE="" RUN_ENV=() OVERRIDES=()
while (( $# )); do
  arg=$1; shift
  case $arg in
    --) OVERRIDES=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    --spot) SPOT=1 ;;
    --queued) QUEUED=1 ;;
    --no-follow) FOLLOW=0 ;;
    --dry-run) DRY_RUN=1 ;;
    --*=*|--*)
      key=${arg%%=*}
      if [[ $arg == *=* ]]; then val=${arg#*=}
      elif (( $# )); then val=$1; shift
      else die "option $key needs a value ($key=VALUE); see launch/tpu.sh --help"; fi
      case $key in
        --project) PROJECT=$val ;;       --zone) ZONE=$val ;;
        --name) NAME=$val ;;             --accelerator) ACCEL=$val ;;
        --version) VERSION=$val ;;       --bucket) BUCKET=${val#gs://}; BUCKET=${BUCKET%/} ;;
        --run-name) RUN_NAME=$val ;;     --config) CONFIG=$val ;;
        --env) [[ $val =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env=$val: expected KEY=VALUE"
               RUN_ENV+=("$val") ;;
        --git) GIT_URL=$val ;;           --ref) GIT_REF=$val ;;
        --worker) WORKER=$val ;;
        *) die "unknown option $key; see launch/tpu.sh --help" ;;
      esac ;;
    create|setup|run|logs|stop|delete|up)
      [[ -z $COMMAND ]] || die "two commands given ($COMMAND, $arg); run them one after the other"
      COMMAND=$arg ;;
    *) die "unknown argument '$arg': expected a command (create setup run logs stop delete up); \
config overrides go after '--', e.g. launch/tpu.sh run -- --config.train.steps=10" ;;
  esac
done
[[ -n $COMMAND ]] || { usage >&2; die "no command given"; }
(( ${#OVERRIDES[@]} == 0 )) || [[ $COMMAND == run || $COMMAND == up ]] \
  || die "config overrides after '--' only apply to run / up, not $COMMAND"

# ----------------------------------------------------------------------------- gcloud, project, zone
HAVE_GCLOUD=0; command -v gcloud >/dev/null 2>&1 && HAVE_GCLOUD=1
(( HAVE_GCLOUD || DRY_RUN )) || die "gcloud not found on PATH. Install the Google Cloud CLI \
(https://cloud.google.com/sdk/docs/install) and run 'gcloud auth login', or add --dry-run to only print the commands."
gcloud_config() { (( HAVE_GCLOUD )) && gcloud config get-value "$1" 2>/dev/null || true; }
[[ -n $PROJECT ]] || PROJECT=${CLOUDSDK_CORE_PROJECT:-}
[[ -n $PROJECT ]] || PROJECT=$(gcloud_config project)
[[ -n $ZONE ]] || ZONE=${CLOUDSDK_COMPUTE_ZONE:-}
[[ -n $ZONE ]] || ZONE=$(gcloud_config compute/zone)
missing=()
[[ -n $PROJECT ]] || missing+=("project: pass --project=ID, or export CLOUDSDK_CORE_PROJECT=ID, or run 'gcloud config set project ID'")
[[ -n $ZONE ]] || missing+=("zone: pass --zone=ZONE (e.g. us-central2-b), or export CLOUDSDK_COMPUTE_ZONE=ZONE, or run 'gcloud config set compute/zone ZONE'")
if (( ${#missing[@]} )); then
  printf 'launch/tpu.sh: error: no GCP %s\n' "${missing[@]}" >&2; exit 2
fi
LOC=(--zone="$ZONE" --project="$PROJECT")

if [[ -z $VERSION ]]; then
  case $ACCEL in
    v5litepod-*|v5e-*) VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    *) VERSION=tpu-ubuntu2204-base ;;   # v2, v3, v4
  esac
fi
[[ $CONFIG == "$ROOT"/* ]] && CONFIG=${CONFIG#"$ROOT"/}
[[ -n $RUN_NAME ]] || { RUN_NAME=$(basename "$CONFIG"); RUN_NAME=${RUN_NAME%.py}; }
MOUNT=${BUCKET:+/mnt/gcs/$BUCKET}

# ----------------------------------------------------------------------------------------- commands
cmd_create() {
  if (( QUEUED )); then
    if exists compute tpus queued-resources describe "$NAME"; then
      note "queued resource $NAME already exists in $ZONE; not creating it again"
    else
      local flags=(--node-id="$NAME" --accelerator-type="$ACCEL" --runtime-version="$VERSION")
      (( SPOT )) && flags+=(--spot)
      gc compute tpus queued-resources create "$NAME" "${LOC[@]}" "${flags[@]}"
    fi
    (( DRY_RUN )) || wait_active
  elif exists compute tpus tpu-vm describe "$NAME"; then
    note "TPU VM $NAME already exists in $ZONE; not creating it again"
  else
    local flags=(--accelerator-type="$ACCEL" --version="$VERSION")
    (( SPOT )) && flags+=(--spot)
    gc compute tpus tpu-vm create "$NAME" "${LOC[@]}" "${flags[@]}"
  fi
}

wait_active() {
  local state
  while :; do
    state=$(gcloud compute tpus queued-resources describe "$NAME" "${LOC[@]}" --format='value(state.state)') || state=""
    case $state in
      ACTIVE) note "queued resource $NAME is ACTIVE"; return 0 ;;
      FAILED|SUSPENDED) die "queued resource $NAME is $state; 'launch/tpu.sh delete --queued' it and create again" ;;
      *) note "queued resource $NAME is ${state:-unknown}; checking again in 30 s (Ctrl-C is safe)"; sleep 30 ;;
    esac
  done
}

ssh_all() { gc compute tpus tpu-vm ssh "$NAME" "${LOC[@]}" --worker=all --command="$1"; }

# gcsfuse mount: orbax renames its temporary checkpoint directory on local-looking paths, which
# gcsfuse only allows up to --rename-dir-limit objects; caching is off because all workers write.
mount_script() {
  if [[ -z $BUCKET ]]; then printf 'true'; return; fi
  printf '%s' "{ mountpoint -q $(q "$MOUNT") || { sudo mkdir -p $(q "$MOUNT") && sudo chown \"\$(id -u):\$(id -g)\" $(q "$MOUNT") \
&& gcsfuse --implicit-dirs --rename-dir-limit=200000 --metadata-cache-ttl-secs=0 $(q "$BUCKET") $(q "$MOUNT"); }; }"
}

cmd_setup() {
  local fetch
  if [[ -n $GIT_URL ]]; then
    fetch="{ [ -d $REMOTE_DIR/.git ] || git clone $(q "$GIT_URL") $REMOTE_DIR; } && git -C $REMOTE_DIR fetch --all -q \
&& git -C $REMOTE_DIR checkout -q $(q "$GIT_REF") && { git -C $REMOTE_DIR pull -q --ff-only 2>/dev/null || true; }"
  else
    local tgz=${TMPDIR:-/tmp}/sdpo-jax-$NAME.tgz
    pack_checkout "$tgz"
    gc compute tpus tpu-vm scp "$tgz" "$NAME:sdpo-jax.tgz" "${LOC[@]}" --worker=all
    # a fresh copy of the code on every setup; the venv is kept so re-running setup is quick
    fetch="mkdir -p $REMOTE_DIR && find $REMOTE_DIR -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} + \
&& tar -xzf sdpo-jax.tgz -C $REMOTE_DIR"
  fi
  local gcsfuse=""
  [[ -z $BUCKET ]] || gcsfuse="{ command -v gcsfuse >/dev/null || { \
echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" \
| sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null && curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg \
| sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null && sudo apt-get update -q && sudo apt-get install -y -q gcsfuse; }; } && "
  # Python >= 3.11 (the pinned jax needs it; TPU images ship 3.10): uv finds or fetches one.
  local install="cd $REMOTE_DIR && { command -v uv >/dev/null || [ -x ~/.local/bin/uv ] \
|| curl -LsSf https://astral.sh/uv/install.sh | sh; } && export PATH=\"\$HOME/.local/bin:\$PATH\" \
&& { [ -x .venv/bin/python ] || uv venv -q --seed --python 3.11 .venv; } \
&& .venv/bin/pip install -q -r requirements.txt \"jax[tpu]==\$(sed -n 's/^jax==\\([^ ;#]*\\).*/\\1/p' requirements.txt)\" \
&& .venv/bin/python -c 'import socket, jax, sdpo_jax; print(socket.gethostname(), \"jax\", jax.__version__, \"ready\")'"
  ssh_all "$gcsfuse$fetch && $(mount_script) && $install"
}

# Tracked + untracked-but-not-ignored files of this checkout (uncommitted edits included).
pack_checkout() {
  local tgz=$1
  if (( DRY_RUN )); then echo "# pack $ROOT (git ls-files --cached --others --exclude-standard) into $tgz"; return; fi
  if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    local files=() f
    while IFS= read -r -d '' f; do [[ -e $ROOT/$f ]] && files+=("$f"); done \
      < <(git -C "$ROOT" ls-files -z --cached --others --exclude-standard)
    tar -czf "$tgz" -C "$ROOT" "${files[@]}"
  else
    tar -czf "$tgz" -C "$ROOT" --exclude=.venv --exclude=runs --exclude=.jax_cache --exclude=__pycache__ .
  fi
  note "packed $(du -h "$tgz" | cut -f1) of code into $tgz"
}

cmd_run() {
  local argv=(.venv/bin/python -m sdpo_jax.main --config="$CONFIG")
  local o has_run_dir=0
  for o in "${OVERRIDES[@]}"; do [[ $o == --config.run_dir=* || $o == --config.run_dir ]] && has_run_dir=1; done
  if [[ -n $BUCKET ]] && (( ! has_run_dir )); then argv+=(--config.run_dir="$MOUNT/runs/$RUN_NAME"); fi
  [[ -n $BUCKET ]] || (( has_run_dir )) || note "no --bucket: run_dir stays on each worker's disk and is lost on delete"
  argv+=("${OVERRIDES[@]}")
  local exports="" kv
  for kv in "${RUN_ENV[@]}"; do exports+="export ${kv%%=*}=$(q "${kv#*=}"); "; done
  # JAX_NUM_PROCESSES (from the worker list in the TPU metadata) makes sharding.maybe_initialize_distributed
  # call jax.distributed.initialize(), which then finds the coordinator on its own.
  local script
  script="cd $REMOTE_DIR || exit 1; $(mount_script) || exit 1; \
if [ -f $RUN_PID ] && kill -0 \"\$(cat $RUN_PID)\" 2>/dev/null; then echo \"\$(hostname): a run is still going; \
stop it first with launch/tpu.sh stop\" >&2; exit 1; fi; \
n=\$(curl -fs -m 5 -H Metadata-Flavor:Google \
http://metadata.google.internal/computeMetadata/v1/instance/attributes/worker-network-endpoints | tr , '\\n' | grep -c . || true); \
if [ \"\${n:-0}\" -gt 1 ]; then export JAX_NUM_PROCESSES=\$n; fi; ${exports}\
nohup setsid $(qjoin "${argv[@]}") > $RUN_LOG 2>&1 < /dev/null & echo \$! > $RUN_PID"
  ssh_all "$script"
  if (( FOLLOW )); then cmd_logs; else note "started; stream worker $WORKER's log with: launch/tpu.sh logs"; fi
}

cmd_logs() {
  gc compute tpus tpu-vm ssh "$NAME" "${LOC[@]}" --worker="$WORKER" \
    --command="if [ -f $RUN_PID ]; then tail -n +1 -F --pid=\"\$(cat $RUN_PID)\" $RUN_LOG; \
else echo \"\$(hostname): no run started here (launch/tpu.sh run)\" >&2; exit 1; fi"
}

cmd_stop() {
  ssh_all "if [ -f $RUN_PID ]; then kill -TERM -- -\"\$(cat $RUN_PID)\" 2>/dev/null && echo \"\$(hostname): stopping\" || true; fi"
}

cmd_delete() {
  if (( QUEUED )); then
    if (( DRY_RUN )) || exists compute tpus queued-resources describe "$NAME"; then
      gc compute tpus queued-resources delete "$NAME" "${LOC[@]}" --force --quiet
    else note "queued resource $NAME does not exist in $ZONE; nothing to delete"; fi
  elif (( DRY_RUN )) || exists compute tpus tpu-vm describe "$NAME"; then
    gc compute tpus tpu-vm delete "$NAME" "${LOC[@]}" --quiet
  else note "TPU VM $NAME does not exist in $ZONE; nothing to delete"; fi
}

case $COMMAND in
  up) cmd_create; cmd_setup; cmd_run ;;
  *) "cmd_$COMMAND" ;;
esac
