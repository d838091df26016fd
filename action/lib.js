'use strict';
// kiln's GitHub Action, without dependencies: inputs parsed as docker/build-push-action
// parses them, kiln installed from the action's own checkout, the build run with the
// runner's cache credentials, outputs, a job summary and log groups per stage.

const fs = require('fs');
const os = require('os');
const path = require('path');
const cp = require('child_process');

const ACTION_ROOT = path.resolve(__dirname, '..');

// ------------------------------------------------------------------ inputs

// One CSV document as csv-parse reads it for the docker actions (relaxed quotes, any
// number of columns, empty lines skipped): a list of records, each a list of fields.
function parseCsv(text, quote = true) {
  const records = [];
  let record = [];
  let field = '';
  let quoted = false; // inside a quoted field
  let wasQuoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (c === '"') {
        quoted = false;
      } else {
        field += c;
      }
      continue;
    }
    if (quote && c === '"' && field === '' && !wasQuoted) {
      quoted = true;
      wasQuoted = true;
    } else if (c === ',') {
      record.push(field);
      field = '';
      wasQuoted = false;
    } else if (c === '\n' || c === '\r') {
      if (c === '\r' && text[i + 1] === '\n') i++;
      record.push(field);
      if (record.length > 1 || record[0] !== '') records.push(record);
      record = [];
      field = '';
      wasQuoted = false;
    } else {
      field += c; // a quote inside an unquoted field is kept (relaxed quotes)
    }
  }
  record.push(field);
  if (record.length > 1 || record[0] !== '') records.push(record);
  return records;
}

// docker/actions-toolkit's Util.getList: newline-separated items; without ignoreComma a
// line's comma-separated fields are items too; with it, a line is one item.
function parseList(text, {ignoreComma = false, quote = true} = {}) {
  if (!text) return [];
  const out = [];
  for (const record of parseCsv(text, quote)) {
    if (record.length === 1) {
      out.push(...(ignoreComma ? [record[0]] : record[0].split(',')));
    } else if (!ignoreComma) {
      out.push(...record);
    } else {
      out.push(record.join(','));
    }
  }
  return out.map((item) => item.trim()).filter((item) => item);
}

function input(env, name) {
  return (env[`INPUT_${name.replace(/ /g, '_').toUpperCase()}`] || '').trim();
}

function booleanInput(env, name) {
  const value = input(env, name);
  if (value === '') return false;
  if (['true', 'True', 'TRUE'].includes(value)) return true;
  if (['false', 'False', 'FALSE'].includes(value)) return false;
  throw new Error(`Input ${name} must be true or false, not ${JSON.stringify(value)}`);
}

function getInputs(env) {
  const list = (name, opts) => parseList(input(env, name), opts);
  return {
    context: input(env, 'context') || '.',
    file: input(env, 'file'),
    tags: list('tags'),
    labels: list('labels', {ignoreComma: true}),
    buildArgs: list('build-args', {ignoreComma: true}),
    target: input(env, 'target'),
    push: booleanInput(env, 'push'),
    load: booleanInput(env, 'load'),
    outputs: list('outputs', {ignoreComma: true, quote: false}),
    cacheFrom: list('cache-from', {ignoreComma: true}),
    cacheTo: list('cache-to', {ignoreComma: true}),
    platforms: list('platforms'),
    secrets: list('secrets', {ignoreComma: true}),
    secretFiles: list('secret-files', {ignoreComma: true}),
    noCache: booleanInput(env, 'no-cache'),
    pull: booleanInput(env, 'pull'),
    network: input(env, 'network'),
    provenance: input(env, 'provenance'),
    sbom: input(env, 'sbom'),
    kilnRoot: input(env, 'kiln-root'),
  };
}

// ------------------------------------------------------------------ arguments

function splitSecret(text, what) {
  const at = text.indexOf('=');
  if (at <= 0) throw new Error(`${what} entry must be KEY=VALUE, not ${JSON.stringify(text.split('=')[0])}`);
  return [text.slice(0, at), text.slice(at + 1)];
}

// kiln's command line for *inputs*; secret values go to files in *scratch* (mode 600).
function buildArgs(inputs, scratch) {
  const args = ['build', '--progress', 'plain', '--metadata-file', path.join(scratch, 'metadata.json')];
  if (inputs.file) args.push('--file', inputs.file);
  for (const tag of inputs.tags) args.push('--tag', tag);
  for (const label of inputs.labels) args.push('--label', label);
  for (const arg of inputs.buildArgs) args.push('--build-arg', arg);
  if (inputs.target) args.push('--target', inputs.target);
  for (const output of inputs.outputs) args.push('--output', output);
  if (inputs.load) args.push('--output', `type=docker,dest=${path.join(scratch, 'image.tar')}`);
  for (const from of inputs.cacheFrom) args.push('--cache-from', from);
  for (const to of inputs.cacheTo) args.push('--cache-to', to);
  if (inputs.platforms.length > 0) args.push('--platform', inputs.platforms.join(','));
  inputs.secrets.forEach((secret, n) => {
    const [id, value] = splitSecret(secret, 'secrets');
    const file = path.join(scratch, `secret-${n}`);
    fs.writeFileSync(file, value, {mode: 0o600});
    args.push('--secret', `id=${id},src=${file}`);
  });
  for (const secret of inputs.secretFiles) {
    const [id, file] = splitSecret(secret, 'secret-files');
    args.push('--secret', `id=${id},src=${path.resolve(file)}`);
  }
  if (inputs.noCache) args.push('--no-cache');
  if (inputs.network) args.push('--network', inputs.network);
  if (inputs.push) args.push('--push');
  args.push(inputs.context);
  return args;
}

function notices(inputs) {
  const out = [];
  if (inputs.provenance && inputs.provenance !== 'false') {
    out.push('provenance: kiln does not produce provenance attestations yet; the input is ignored');
  }
  if (inputs.sbom && inputs.sbom !== 'false') {
    out.push('sbom: kiln does not produce SBOM attestations yet; the input is ignored');
  }
  return out;
}

// ------------------------------------------------------------------ outputs

function setOutput(env, name, value) {
  const file = env.GITHUB_OUTPUT;
  if (!file) {
    process.stdout.write(`::set-output name=${name}::${value}\n`);
    return;
  }
  const delimiter = `kiln_${Math.random().toString(36).slice(2)}`;
  fs.appendFileSync(file, `${name}<<${delimiter}\n${value}\n${delimiter}\n`);
}

function outputsOf(metadata) {
  const digest = metadata['containerimage.digest'] || '';
  return {
    digest,
    imageid: metadata['containerimage.config.digest'] || digest,
    metadata: JSON.stringify(metadata),
  };
}

function formatBytes(n) {
  if (!n) return '0 B';
  const units = ['B', 'kB', 'MB', 'GB'];
  let value = n;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

function escapeCell(text) {
  return String(text).replace(/\|/g, '\\|').replace(/\n/g, ' ');
}

// The job summary: every step (cached where from, or why it ran; time), the bytes moved,
// the cache mounts.
function summary(metadata, seconds) {
  const steps = metadata.steps || [];
  const cached = steps.filter((s) => s.cached).length;
  const lines = [
    `### kiln build ${metadata['containerimage.digest'] || ''}`,
    '',
    `${cached}/${steps.length} steps cached, ${seconds.toFixed(1)} s; pulled ${formatBytes(metadata.bytes_pulled)}, pushed ${formatBytes(metadata.bytes_pushed)}`,
    '',
    '| step | cached | seconds | why it ran |',
    '| --- | --- | --- | --- |',
  ];
  for (const step of steps) {
    const how = step.cached ? `yes (${step.source || step.cached})` : 'no';
    const why = step.miss_reason ? step.miss_reason.detail || step.miss_reason.kind : '';
    lines.push(`| ${escapeCell(step.step)} | ${escapeCell(how)} | ${step.seconds} | ${escapeCell(why)} |`);
  }
  const mounts = metadata.cache_mounts || [];
  if (mounts.length > 0) {
    lines.push('', '| cache mount | restored | exported |', '| --- | --- | --- |');
    for (const m of mounts) {
      const restored = m.restored_from ? `${formatBytes(m.imported_bytes)} from ${m.restored_from}` : '-';
      const exported = m.export ? `${m.export}, ${formatBytes(m.exported_bytes)}` : '-';
      lines.push(`| ${escapeCell(m.id)} | ${escapeCell(restored)} | ${escapeCell(exported)} |`);
    }
  }
  if ((metadata.pushed || []).length > 0) {
    lines.push('', 'Pushed: ' + metadata.pushed.map((r) => `\`${r}\``).join(', '));
  }
  return lines.join('\n') + '\n';
}

// ------------------------------------------------------------------ log groups

// Passes kiln's plain progress through, one `::group::` per stage: a line `#N [stage ...]`
// of another stage than the open group closes it and opens that stage's.
class StageGroups {
  constructor(write) {
    this.write = write;
    this.open = null;
    this.rest = '';
  }

  feed(chunk) {
    const lines = (this.rest + chunk).split('\n');
    this.rest = lines.pop();
    for (const line of lines) this.line(line);
  }

  line(line) {
    const m = /^#\d+ \[(.+?) \d+\/\d+\]/.exec(line);
    if (m && m[1] !== this.open) {
      if (this.open !== null) this.write('::endgroup::\n');
      this.open = m[1];
      this.write(`::group::${m[1]}\n`);
    } else if (!m && this.open !== null && !/^#\d+ /.test(line)) {
      this.write('::endgroup::\n');
      this.open = null;
    }
    this.write(line + '\n');
  }

  end() {
    if (this.rest) this.line(this.rest);
    this.rest = '';
    if (this.open !== null) this.write('::endgroup::\n');
    this.open = null;
  }
}

// ------------------------------------------------------------------ install and run

function run(cmd, args, opts = {}) {
  const res = cp.spawnSync(cmd, args, {stdio: 'inherit', ...opts});
  if (res.error) throw res.error;
  if (res.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (exit ${res.status})`);
}

function isRoot() {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

function which(name) {
  return cp.spawnSync('sh', ['-c', `command -v ${name}`], {stdio: 'ignore'}).status === 0;
}

// Runs *fn* holding a lock directory (parallel jobs on one self-hosted machine share the
// virtualenv); a lock older than 15 minutes is a crashed holder's and is taken over.
function withLock(lock, fn) {
  fs.mkdirSync(path.dirname(lock), {recursive: true});
  const deadline = Date.now() + 20 * 60 * 1000;
  for (;;) {
    try {
      fs.mkdirSync(lock);
      break;
    } catch (err) {
      if (err.code !== 'EEXIST') throw err;
      const age = Date.now() - fs.statSync(lock).mtimeMs;
      if (age > 15 * 60 * 1000) fs.rmSync(lock, {recursive: true, force: true});
      else if (Date.now() > deadline) throw new Error(`timed out waiting for ${lock}`);
      else Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 500);
    }
  }
  try {
    return fn();
  } finally {
    fs.rmSync(lock, {recursive: true, force: true});
  }
}

// kiln in a virtualenv reused within the job (KILN_VENV, default in the runner's temp
// directory), from the action's own checkout; runc and slirp4netns from apt if missing.
function install(env, log = (m) => process.stdout.write(m + '\n')) {
  const venv = env.KILN_VENV || path.join(env.RUNNER_TEMP || os.tmpdir(), 'kiln-venv');
  const kiln = path.join(venv, 'bin', 'kiln');
  const started = Date.now();
  if (!fs.existsSync(kiln)) {
    withLock(`${venv}.lock`, () => {
      if (fs.existsSync(kiln)) return; // another job of this machine installed it meanwhile
      log(`installing kiln from ${ACTION_ROOT} into ${venv}`);
      run('python3', ['-m', 'venv', venv]);
      run(path.join(venv, 'bin', 'pip'), ['install', '--quiet', '--disable-pip-version-check', ACTION_ROOT]);
    });
  }
  const missing = ['runc', 'slirp4netns'].filter((tool) => !which(tool));
  if (missing.length > 0) {
    const sudo = isRoot() ? [] : ['sudo'];
    const apt = (args) => (sudo.length ? run('sudo', ['apt-get', ...args]) : run('apt-get', args));
    log(`installing ${missing.join(', ')}`);
    apt(['update', '-qq']);
    apt(['install', '-y', '-qq', '--no-install-recommends', ...missing]);
  }
  return {kiln, seconds: (Date.now() - started) / 1000};
}

// The directory kiln keeps its state in: the input, else $KILN_ROOT (a self-hosted
// runner's persistent disk), else a fresh one in the runner's temp directory.
function kilnRoot(inputs, env) {
  if (inputs.kilnRoot) return inputs.kilnRoot;
  if (env.KILN_ROOT) return env.KILN_ROOT;
  return fs.mkdtempSync(path.join(env.RUNNER_TEMP || os.tmpdir(), 'kiln-root-'));
}

// Runs kiln (as root: overlayfs and runc need it), keeping the runner's cache variables.
function runKiln(kiln, args, env, groups) {
  const childEnv = {...env};
  let cmd = kiln;
  let argv = args;
  if (!isRoot()) {
    cmd = 'sudo';
    const keep = Object.keys(childEnv).filter((k) => /^(ACTIONS_|GITHUB_|KILN_|RUNNER_|DOCKER_CONFIG$|SOURCE_DATE_EPOCH$|HTTPS?_PROXY$|NO_PROXY$)/i.test(k));
    argv = ['--preserve-env=' + keep.join(','), kiln, ...args];
  }
  return new Promise((resolve) => {
    const child = cp.spawn(cmd, argv, {env: childEnv, stdio: ['ignore', 'inherit', 'pipe']});
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk) => groups.feed(chunk));
    child.on('close', (code) => {
      groups.end();
      resolve(code === null ? 1 : code);
    });
  });
}

module.exports = {
  ACTION_ROOT,
  StageGroups,
  buildArgs,
  getInputs,
  install,
  kilnRoot,
  notices,
  outputsOf,
  parseCsv,
  parseList,
  runKiln,
  setOutput,
  summary,
};
