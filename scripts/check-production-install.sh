#!/usr/bin/env bash
# Proves the production install path without Docker, step for step as the Dockerfile:
#
#   1. build tree:  the repository's files (no node_modules/dist/data), `npm ci`,
#                   `npm run build`                         (Dockerfile stage "build")
#   2. prod tree:   dist/ + package.json + package-lock.json only,
#                   `npm ci --omit=dev --ignore-scripts`    (stages "prod-deps" + "runtime")
#   3. the prod tree starts with NODE_ENV=production and answers GET /healthz and
#      GET /readyz; start-to-ready time is printed; SIGTERM shuts it down cleanly
#   4. NODE_ENV=production without TWILIO_AUTH_TOKEN exits non-zero with one line
#      naming TWILIO_AUTH_TOKEN
#   5. no devDependency (vitest, typescript, playwright-core, …) is installed
#   6. production code (every module dist/src/server.js reaches, dynamic imports
#      included) imports every production dependency, and nothing else outside Node
#
# The prod tree has no `node` devDependency, so it runs on the pinned Node 24 from
# the build tree's node_modules/.bin/node (in the image, distroless nodejs24 is the
# runtime).
#
# The files copied are those git knows and does not ignore (tracked, plus untracked
# files not in .gitignore); on a fresh clone that is exactly HEAD.
#
# Usage: bash scripts/check-production-install.sh      Exit status non-zero on failure.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
READY_TIMEOUT_S=20
SHUTDOWN_TIMEOUT_S=12
DEV_ONLY_REQUIRED=(vitest typescript playwright-core)

WORK="$(mktemp -d "${TMPDIR:-/tmp}/heyai-prod-check.XXXXXX")"
BUILD="$WORK/build"
PROD="$WORK/prod"
DATA="$WORK/data"
LOG="$WORK/server.log"
SERVER_PID=""

cleanup() {
  local status=$?
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() { printf '\n--- %s\n' "$*"; }
fail() {
  printf 'check-production-install: FAIL: %s\n' "$*" >&2
  exit 1
}
now_ms() { date +%s%3N; }

mkdir -p "$BUILD" "$PROD" "$DATA"

step "copy the repository's files to $BUILD"
(
  cd "$REPO"
  git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' file; do
      # A tracked file deleted in the working tree is listed but absent.
      [[ -e "$file" ]] && printf '%s\0' "$file"
    done |
    tar --null --files-from=- -cf - |
    tar -xf - -C "$BUILD"
)
for excluded in node_modules dist data; do
  [[ ! -e "$BUILD/$excluded" ]] || fail "$excluded/ was copied into the build tree (is it missing from .gitignore?)"
done

step "build tree: npm ci"
# Run npm on Node 24 as the node:24 build image does, when the repository's own
# install already provides it (as in .ci/run); otherwise on whatever node is on PATH.
NPM_PATH="$PATH"
if [[ -x "$REPO/node_modules/.bin/node" && "$("$REPO/node_modules/.bin/node" --version 2>/dev/null)" == v24.* ]]; then
  mkdir -p "$WORK/node24"
  ln -s "$REPO/node_modules/.bin/node" "$WORK/node24/node"
  NPM_PATH="$WORK/node24:$PATH"
fi
(cd "$BUILD" && PATH="$NPM_PATH" npm ci --no-audit --no-fund)
NODE24="$BUILD/node_modules/.bin/node"
[[ -x "$NODE24" ]] || fail "$NODE24 is missing: the 'node' devDependency did not install Node 24"
NODE_VERSION="$("$NODE24" --version)"
[[ "$NODE_VERSION" == v24.* ]] || fail "expected Node 24 from the 'node' devDependency, got $NODE_VERSION"
echo "Node $NODE_VERSION at $NODE24"
# From here on npm itself runs on Node 24 too, as in the node:24 build image.
export PATH="$BUILD/node_modules/.bin:$PATH"

step "build tree: npm run build"
(cd "$BUILD" && npm run build)
[[ -f "$BUILD/dist/src/server.js" ]] || fail "npm run build did not produce dist/src/server.js"
if grep -rEn --include='*.js' "from '\.{1,2}/[^']*\.ts'|import\('\.{1,2}/[^']*\.ts'\)" "$BUILD/dist"; then
  fail "dist/ still imports .ts files (rewriteRelativeImportExtensions not applied)"
fi

step "prod tree: dist/ + package.json + package-lock.json, npm ci --omit=dev --ignore-scripts"
cp -R "$BUILD/dist" "$PROD/dist"
# As the Dockerfile does: the admin console's diagram sits beside dist/src.
mkdir -p "$PROD/dist/docs" && cp -R "$BUILD/docs/diagram" "$PROD/dist/docs/diagram"
cp "$BUILD/package.json" "$BUILD/package-lock.json" "$PROD/"
(cd "$PROD" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund)

step "prod tree: no devDependencies installed"
# Every package the lockfile marks "dev": true (needed only by devDependencies) must
# be absent, and vitest, typescript and playwright-core must not appear anywhere.
# A devDependency may legitimately be present when a production package needs it
# too (e.g. @types/node, a dependency of protobufjs); the lockfile then does not
# mark it dev.
"$NODE24" - "$PROD" "${DEV_ONLY_REQUIRED[@]}" <<'NODE' || fail "devDependencies found in the production node_modules"
const { existsSync, readdirSync } = require('node:fs');
const { join } = require('node:path');
const [prod, ...mustBeAbsent] = process.argv.slice(2);
const lock = require(join(prod, 'package-lock.json'));
const pkg = require(join(prod, 'package.json'));
const problems = [];
const devOnly = Object.entries(lock.packages).filter(([path, entry]) => path && entry.dev);
for (const [path] of devOnly) if (existsSync(join(prod, path))) problems.push(`${path} (dev-only in package-lock.json)`);
const walk = (dir) => {
  let entries;
  try { entries = readdirSync(dir, { withFileTypes: true }); } catch { return; }
  for (const e of entries) {
    if (!e.isDirectory()) continue;
    const full = join(dir, e.name);
    if (e.name.startsWith('@')) { walk(full); continue; }
    const name = dir.endsWith('node_modules') ? e.name : `${dir.split('/').at(-1)}/${e.name}`;
    if (mustBeAbsent.includes(name)) problems.push(full.slice(prod.length + 1));
    walk(join(full, 'node_modules'));
  }
};
walk(join(prod, 'node_modules'));
for (const name of mustBeAbsent) if (!(name in (pkg.devDependencies ?? {}))) problems.push(`${name} is not a devDependency in package.json`);
if (problems.length) {
  for (const p of [...new Set(problems)]) console.error(`  ${p}`);
  process.exit(1);
}
const devDeps = Object.keys(pkg.devDependencies ?? {});
const shared = devDeps.filter((name) => existsSync(join(prod, 'node_modules', name)));
console.log(`absent: ${devOnly.length} dev-only packages from the lockfile, including ${devDeps.filter((n) => !shared.includes(n)).join(', ')}`);
if (shared.length) console.log(`present because production packages need them too: ${shared.join(', ')}`);
NODE
echo "production node_modules: $(du -sh "$PROD/node_modules" | cut -f1)"

step "prod tree: production code imports every production dependency, and no other package"
# Follows the compiled imports from dist/src/server.js (static, re-exports and
# `import('…')`), as the image runs them. A dependency nothing imports is dead weight
# in the image; a package imported but not a dependency is missing from it.
"$NODE24" - "$PROD" <<'NODE' || fail "production dependencies and production imports differ"
const { existsSync, readFileSync } = require('node:fs');
const { isBuiltin } = require('node:module');
const { dirname, join, relative, resolve } = require('node:path');
const [prod] = process.argv.slice(2);
const dependencies = Object.keys(require(join(prod, 'package.json')).dependencies ?? {});
const IMPORT = /^\s*(?:import|export)\s[^;]*?\sfrom\s*(['"])([^'"]+)\1|^\s*import\s*(['"])([^'"]+)\3|\bimport\(\s*(['"])([^'"]+)\5\s*\)/gm;
const packageOf = (specifier) => specifier.split('/').slice(0, specifier.startsWith('@') ? 2 : 1).join('/');
const imported = new Map(); // package -> first module importing it
const seen = new Set();
const problems = [];
const queue = [join(prod, 'dist/src/server.js')];
while (queue.length > 0) {
  const file = queue.pop();
  if (seen.has(file)) continue;
  seen.add(file);
  for (const match of readFileSync(file, 'utf8').matchAll(IMPORT)) {
    const specifier = match[2] ?? match[4] ?? match[6];
    if (specifier.startsWith('.')) {
      const target = resolve(dirname(file), specifier);
      if (existsSync(target)) queue.push(target);
      else problems.push(`${relative(prod, file)} imports ${specifier}, which is not in dist/`);
    } else if (!isBuiltin(specifier) && !imported.has(packageOf(specifier))) {
      imported.set(packageOf(specifier), relative(prod, file));
    }
  }
}
for (const [name, by] of imported) {
  if (!dependencies.includes(name)) problems.push(`${by} imports ${name}, which is not a production dependency`);
}
for (const name of dependencies) {
  if (!imported.has(name)) problems.push(`${name} is a production dependency that no production module imports`);
}
if (problems.length > 0) {
  for (const problem of problems) console.error(`  ${problem}`);
  process.exit(1);
}
console.log(`${seen.size} modules from dist/src/server.js import all ${dependencies.length} production dependencies: ${dependencies.join(', ')}`);
NODE

PORT="$("$NODE24" -e 'const s = require("node:net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })')"

step "prod tree: start with NODE_ENV=production on port $PORT"
# env -i: only the variables below, so nothing from the caller's environment
# (CALL_STORE, KOOZIE_AGENT_URI, ELEVENLABS_*) changes what starts.
START_MS="$(now_ms)"
(
  cd "$PROD"
  exec env -i PATH="/usr/bin:/bin" HOME="$WORK" \
    NODE_ENV=production \
    TWILIO_AUTH_TOKEN=prod-install-check-token \
    PUBLIC_BASE_URL=https://example.invalid \
    PORT="$PORT" \
    DATA_DIR="$DATA" \
    "$NODE24" dist/src/server.js
) >"$LOG" 2>&1 &
SERVER_PID=$!

deadline=$((START_MS + READY_TIMEOUT_S * 1000))
status=""
while :; do
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    cat "$LOG" >&2
    fail "the server exited before /healthz answered"
  fi
  status="$(curl -s -o "$WORK/healthz.json" -w '%{http_code}' --max-time 1 "http://127.0.0.1:$PORT/healthz" || true)"
  [[ "$status" == 200 ]] && break
  if (($(now_ms) > deadline)); then
    cat "$LOG" >&2
    fail "/healthz did not answer 200 within ${READY_TIMEOUT_S}s (last status: ${status:-none})"
  fi
  sleep 0.05
done
READY_MS=$(($(now_ms) - START_MS))
grep -q '"status":"ok"' "$WORK/healthz.json" || fail "/healthz answered 200 but not {\"status\":\"ok\"}: $(cat "$WORK/healthz.json")"
echo "GET /healthz -> 200 $(cat "$WORK/healthz.json")"
readyz="$(curl -s -w ' %{http_code}' --max-time 5 "http://127.0.0.1:$PORT/readyz" || true)"
[[ "$readyz" == *" 200" ]] || fail "GET /readyz did not answer 200: $readyz"
echo "GET /readyz -> ${readyz##* } ${readyz% *}"
echo "start-to-ready (process spawn to first 200 from /healthz): ${READY_MS} ms"
startMs="$(grep -o '"startMs":[0-9]*' "$LOG" | head -n1 | cut -d: -f2 || true)"
[[ -z "$startMs" ]] || echo "server's own start-to-listen measure (startMs, after module load): ${startMs} ms"

step "prod tree: SIGTERM shuts down cleanly"
kill -TERM "$SERVER_PID"
shutdown_deadline=$(($(now_ms) + SHUTDOWN_TIMEOUT_S * 1000))
while kill -0 "$SERVER_PID" 2>/dev/null && (($(now_ms) < shutdown_deadline)); do sleep 0.05; done
if kill -0 "$SERVER_PID" 2>/dev/null; then
  cat "$LOG" >&2
  fail "the server was still running ${SHUTDOWN_TIMEOUT_S}s after SIGTERM"
fi
exit_status=0
wait "$SERVER_PID" || exit_status=$?
SERVER_PID=""
if ((exit_status != 0)); then
  cat "$LOG" >&2
  fail "the server exited with status $exit_status after SIGTERM (expected 0)"
fi
echo "exited 0 after SIGTERM"

step "prod tree: NODE_ENV=production without TWILIO_AUTH_TOKEN refuses to start"
config_status=0
(
  cd "$PROD"
  exec env -i PATH="/usr/bin:/bin" HOME="$WORK" \
    NODE_ENV=production \
    PUBLIC_BASE_URL=https://example.invalid \
    PORT="$PORT" \
    DATA_DIR="$DATA" \
    timeout 20 "$NODE24" dist/src/server.js
) >"$WORK/noauth.out" 2>"$WORK/noauth.err" || config_status=$?
((config_status != 0)) || fail "the server started (exit 0) without TWILIO_AUTH_TOKEN in production"
((config_status != 124)) || fail "the server kept running without TWILIO_AUTH_TOKEN in production (killed after 20 s)"
stderr_lines="$(grep -c . "$WORK/noauth.err" || true)"
if [[ "$stderr_lines" != 1 ]] || ! grep -q 'TWILIO_AUTH_TOKEN' "$WORK/noauth.err"; then
  echo "stdout:" >&2; cat "$WORK/noauth.out" >&2
  echo "stderr:" >&2; cat "$WORK/noauth.err" >&2
  fail "expected exactly one line naming TWILIO_AUTH_TOKEN on stderr, got $stderr_lines line(s)"
fi
echo "exit status $config_status, stderr: $(cat "$WORK/noauth.err")"

printf '\ncheck-production-install: OK (Node %s, start-to-ready %s ms)\n' "$NODE_VERSION" "$READY_MS"
