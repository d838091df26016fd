'use strict';
// The build action (action.yml at the repository root): docker/build-push-action's inputs
// and outputs, run with kiln.

const fs = require('fs');
const os = require('os');
const path = require('path');
const cp = require('child_process');
const lib = require('./lib');

async function main() {
  const env = process.env;
  const inputs = lib.getInputs(env);
  for (const notice of lib.notices(inputs)) process.stdout.write(`::notice title=kiln::${notice}\n`);
  const installed = lib.install(env);
  process.stdout.write(`kiln ready in ${installed.seconds.toFixed(1)} s\n`);
  const scratch = fs.mkdtempSync(path.join(env.RUNNER_TEMP || os.tmpdir(), 'kiln-action-'));
  const childEnv = {...env, KILN_ROOT: lib.kilnRoot(inputs, env), GITHUB_ACTIONS: env.GITHUB_ACTIONS || 'true'};
  const args = lib.buildArgs(inputs, scratch);
  const started = Date.now();
  const groups = new lib.StageGroups((text) => process.stderr.write(text));
  const code = await lib.runKiln(installed.kiln, args, childEnv, groups);
  const seconds = (Date.now() - started) / 1000;
  const metaPath = path.join(scratch, 'metadata.json');
  if (fs.existsSync(metaPath)) {
    const metadata = JSON.parse(fs.readFileSync(metaPath, 'utf8'));
    for (const [name, value] of Object.entries(lib.outputsOf(metadata))) lib.setOutput(env, name, value);
    if (env.GITHUB_STEP_SUMMARY) fs.appendFileSync(env.GITHUB_STEP_SUMMARY, lib.summary(metadata, seconds));
  }
  for (const file of fs.readdirSync(scratch).filter((f) => f.startsWith('secret-'))) {
    fs.rmSync(path.join(scratch, file), {force: true});
  }
  if (code !== 0) {
    process.exitCode = code;
    return;
  }
  if (inputs.load) {
    const res = cp.spawnSync('docker', ['load', '-i', path.join(scratch, 'image.tar')], {stdio: 'inherit'});
    if (res.status !== 0) {
      process.stdout.write('::error title=kiln::docker load of the built image failed\n');
      process.exitCode = 1;
    }
  }
}

main().catch((err) => {
  process.stdout.write(`::error title=kiln::${String(err.message || err).replace(/\n/g, '%0A')}\n`);
  process.exitCode = 1;
});
