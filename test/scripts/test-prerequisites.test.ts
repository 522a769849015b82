/**
 * scripts/test-prerequisites.sh, npm's `pretest`: on a machine without Chromium,
 * `npm test` installs Debian's package when it may, and otherwise stops before
 * any test with the command to run. apt-get, apt-cache, sudo and id are stand-ins
 * on PATH (this machine's packages are shared and stay as they are); Chromium is
 * "missing" by pointing CHROMIUM_PATH at a file that does not exist.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const SCRIPT = fileURLToPath(new URL('../../scripts/test-prerequisites.sh', import.meta.url));

/** A machine where Chromium is missing, `id -u` says `uid`, and sudo lets us in or not. */
function machine(options: { uid: number; sudo: boolean }) {
  const dir = mkdtempSync(join(tmpdir(), 'heyai-prereq-'));
  const bin = join(dir, 'bin');
  const aptLog = join(dir, 'apt-get.log');
  const chromium = join(dir, 'chromium');
  const tool = (name: string, body: string) => {
    writeFileSync(join(bin, name), `#!/bin/bash\n${body}\n`);
    chmodSync(join(bin, name), 0o755);
  };
  mkdirSync(bin);
  // apt-get notes what it was asked; installing chromium provides the binary.
  tool('apt-get', `echo "$*" >> "${aptLog}"\nif [[ " $* " == *" install "* && " $* " == *" chromium "* ]]; then printf '#!/bin/sh\\n' > "${chromium}"; chmod +x "${chromium}"; fi`);
  // No package candidates: the Firestore emulator's apt repository is not configured.
  tool('apt-cache', 'exit 0');
  tool('id', `[[ "$1" == -u ]] && echo ${options.uid}`);
  tool('sudo', options.sudo ? 'while [[ "$1" == -* ]]; do shift; done; [[ "$1" == true ]] || exec "$@"' : 'exit 1');
  const env: Record<string, string> = { PATH: `${bin}:${process.env.PATH}`, HOME: dir, CHROMIUM_PATH: chromium };
  return {
    chromium,
    run: () => spawnSync('bash', [SCRIPT], { env, encoding: 'utf8' }),
    aptCalls: () => (existsSync(aptLog) ? readFileSync(aptLog, 'utf8').trim().split('\n') : []),
  };
}

describe('npm test prerequisites', () => {
  it("installs Debian's chromium with apt-get, waiting for the dpkg lock, when Chromium is missing and it runs as root", () => {
    const m = machine({ uid: 0, sudo: false });
    const result = m.run();
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
    expect(m.aptCalls()).toEqual([
      '-o DPkg::Lock::Timeout=300 update',
      '-o DPkg::Lock::Timeout=300 install -y --no-install-recommends --no-upgrade chromium',
    ]);
    expect(existsSync(m.chromium)).toBe(true);
  });

  it('installs it through passwordless sudo the same way', () => {
    const m = machine({ uid: 1000, sudo: true });
    expect(m.run().status).toBe(0);
    expect(m.aptCalls().at(-1)).toBe('-o DPkg::Lock::Timeout=300 install -y --no-install-recommends --no-upgrade chromium');
  });

  it('stops before any test with the one command to run when it may not install', () => {
    const m = machine({ uid: 1000, sudo: false });
    const result = m.run();
    expect(result.status).toBe(1);
    expect(result.stderr.trim().split('\n')).toEqual([
      `test-prerequisites: Chromium not found at ${m.chromium} (the admin page's browser test needs it). Run: sudo apt-get install -y chromium   (or set CHROMIUM_PATH to a Chromium binary)`,
    ]);
    expect(m.aptCalls()).toEqual([]);
  });
});
