'use strict';
// The setup action: kiln installed, QEMU handlers registered (`kiln setup-qemu`).

const cp = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');
const lib = require('./lib');

try {
  const env = process.env;
  const installed = lib.install(env);
  // `kiln` on the PATH of the job's later steps (through sudo when not root, keeping the
  // runner's cache variables, as the build action runs it)
  const bin = path.join(env.RUNNER_TEMP || os.tmpdir(), 'kiln-bin');
  fs.mkdirSync(bin, {recursive: true});
  const root = typeof process.getuid === 'function' && process.getuid() === 0;
  const run = root ? `exec "${installed.kiln}" "$@"`
    : `exec sudo --preserve-env=ACTIONS_RUNTIME_TOKEN,ACTIONS_CACHE_URL,ACTIONS_RESULTS_URL,DOCKER_CONFIG,KILN_ROOT "${installed.kiln}" "$@"`;
  fs.writeFileSync(path.join(bin, 'kiln'), `#!/bin/sh\n${run}\n`, {mode: 0o755});
  if (env.GITHUB_PATH) fs.appendFileSync(env.GITHUB_PATH, `${bin}\n`);
  lib.setOutput(env, 'kiln', path.join(bin, 'kiln'));
  const platforms = (env.INPUT_PLATFORMS || '').trim();
  if (platforms) {
    const args = ['setup-qemu', '--platforms', platforms];
    const res = root ? cp.spawnSync(installed.kiln, args, {stdio: 'inherit'})
      : cp.spawnSync('sudo', [installed.kiln, ...args], {stdio: 'inherit'});
    if (res.status !== 0) process.exitCode = res.status || 1;
  }
} catch (err) {
  process.stdout.write(`::error title=kiln setup::${String(err.message || err)}\n`);
  process.exitCode = 1;
}
