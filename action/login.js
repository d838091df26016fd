'use strict';
// The login action: `kiln login REGISTRY -u USER --password-stdin` (the password never
// appears on a command line or in the log).

const cp = require('child_process');
const lib = require('./lib');

try {
  const env = process.env;
  const password = env.INPUT_PASSWORD || '';
  process.stdout.write(`::add-mask::${password}\n`);
  const installed = lib.install(env);
  const args = ['login', (env.INPUT_REGISTRY || 'docker.io').trim(), '-u',
    (env.INPUT_USERNAME || '').trim(), '--password-stdin'];
  const root = typeof process.getuid === 'function' && process.getuid() === 0;
  const res = root ? cp.spawnSync(installed.kiln, args, {input: password, stdio: ['pipe', 'inherit', 'inherit']})
    : cp.spawnSync('sudo', ['--preserve-env=DOCKER_CONFIG', installed.kiln, ...args],
      {input: password, stdio: ['pipe', 'inherit', 'inherit']});
  if (res.status !== 0) process.exitCode = res.status || 1;
} catch (err) {
  process.stdout.write(`::error title=kiln login::${String(err.message || err)}\n`);
  process.exitCode = 1;
}
