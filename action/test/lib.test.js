'use strict';
// The action's input parsing and argument building, against docker/build-push-action's
// syntax: `node --test action/test` (run by scripts/test).

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('fs');
const os = require('os');
const path = require('path');
const lib = require('../lib');

const env = (inputs) => Object.fromEntries(Object.entries(inputs).map(([k, v]) => [`INPUT_${k.toUpperCase()}`, v]));

test('lists: newline- or comma-separated, trimmed, empty items dropped', () => {
  assert.deepEqual(lib.parseList('user/app:latest,user/app:1.0\n\n  user/app:edge  \n'),
    ['user/app:latest', 'user/app:1.0', 'user/app:edge']);
  assert.deepEqual(lib.parseList('linux/amd64, linux/arm64'), ['linux/amd64', 'linux/arm64']);
  assert.deepEqual(lib.parseList(''), []);
});

test('ignoreComma lists keep a line whole; CSV quotes protect commas and are removed', () => {
  const opts = {ignoreComma: true};
  assert.deepEqual(lib.parseList('type=registry,ref=u/a:cache,mode=max\ntype=gha', opts),
    ['type=registry,ref=u/a:cache,mode=max', 'type=gha']);
  // a quote not at the start of a field is an ordinary character, as in csv-parse
  assert.deepEqual(lib.parseList('GREETING="hello, world"\nNAME=kiln', opts), ['GREETING="hello, world"', 'NAME=kiln']);
  assert.deepEqual(lib.parseList('"MSG=a,b",X=1', opts), ['MSG=a,b,X=1']);
  // "" inside quotes is one quote; a quote inside an unquoted field is kept (relaxed)
  assert.deepEqual(lib.parseList('"say ""hi"""\nit"s', opts), ['say "hi"', 'it"s']);
  // a quoted value may span lines
  assert.deepEqual(lib.parseList('"KEY=line1\nline2"\nB=2', opts), ['KEY=line1\nline2', 'B=2']);
});

test('outputs are parsed with quotes kept literally (quote: false)', () => {
  assert.deepEqual(lib.parseList('type=image,"name=a,b",push=true', {ignoreComma: true, quote: false}),
    ['type=image,"name=a,b",push=true']);
});

test('inputs map onto kiln build flags as build-push-action maps them onto buildx', () => {
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-action-test-'));
  const inputs = lib.getInputs(env({
    context: 'app', file: 'app/prod.Dockerfile', tags: 'r/app:1\nr/app:latest',
    labels: 'org.opencontainers.image.title=app, the app', 'build-args': 'A=1\nB=two, words',
    target: 'prod', push: 'true', 'cache-from': 'type=gha', 'cache-to': 'type=gha,mode=max',
    platforms: 'linux/amd64,linux/arm64', secrets: 'TOKEN=s3cr3t=with=equals', 'secret-files': 'npmrc=./npmrc',
    'no-cache': 'false', network: 'host',
  }));
  const args = lib.buildArgs(inputs, scratch);
  const pairs = (flag) => args.flatMap((a, i) => (a === flag ? [args[i + 1]] : []));
  assert.deepEqual(pairs('--tag'), ['r/app:1', 'r/app:latest']);
  assert.deepEqual(pairs('--label'), ['org.opencontainers.image.title=app, the app']);
  assert.deepEqual(pairs('--build-arg'), ['A=1', 'B=two, words']);
  assert.deepEqual(pairs('--cache-to'), ['type=gha,mode=max']);
  assert.deepEqual(pairs('--platform'), ['linux/amd64,linux/arm64']);
  assert.deepEqual(pairs('--file'), ['app/prod.Dockerfile']);
  assert.deepEqual(pairs('--network'), ['host']);
  assert.ok(args.includes('--push') && !args.includes('--no-cache'));
  assert.equal(args[args.length - 1], 'app');
  const [secret, file] = pairs('--secret');
  assert.match(secret, /^id=TOKEN,src=/);
  assert.equal(fs.readFileSync(secret.split('src=')[1], 'utf8'), 's3cr3t=with=equals'); // never on argv
  assert.ok(!args.join(' ').includes('s3cr3t'));
  assert.equal((fs.statSync(secret.split('src=')[1]).mode & 0o777), 0o600);
  assert.equal(file, `id=npmrc,src=${path.resolve('./npmrc')}`);
});

test('load writes a docker archive for `docker load`; bad booleans and secrets are errors', () => {
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-action-test-'));
  const args = lib.buildArgs(lib.getInputs(env({load: 'true', tags: 'app:dev'})), scratch);
  assert.ok(args.includes(`type=docker,dest=${path.join(scratch, 'image.tar')}`));
  assert.throws(() => lib.getInputs(env({push: 'yes'})), /push must be true or false/);
  assert.throws(() => lib.buildArgs(lib.getInputs(env({secrets: 'novalue'})), scratch), /KEY=VALUE/);
});

test('provenance and sbom are accepted with a notice', () => {
  const notes = lib.notices(lib.getInputs(env({provenance: 'mode=max', sbom: 'true'})));
  assert.equal(notes.length, 2);
  assert.deepEqual(lib.notices(lib.getInputs(env({provenance: 'false'}))), []);
});

test('outputs and the job summary come from the metadata file', () => {
  const metadata = {
    'containerimage.digest': 'sha256:aa', 'containerimage.config.digest': 'sha256:cc',
    steps: [{step: 'build 2/3 RUN make | tee', cached: 'remote', source: 'registry r/app:cache', seconds: 0},
      {step: 'build 3/3 COPY . .', cached: false, seconds: 1.5,
        miss_reason: {kind: 'file-changed', subject: 'src/a|b.go', detail: 'src/a|b.go changed (and 2 more)'}}],
    bytes_pulled: 1500, bytes_pushed: 0, pushed: ['r/app:1@sha256:aa'],
    cache_mounts: [{id: '/root/.cache/go-build', restored_from: 'registry r/app:cache', imported_bytes: 2500000, export: 'delta', exported_bytes: 1200}],
  };
  const out = lib.outputsOf(metadata);
  assert.equal(out.digest, 'sha256:aa');
  assert.equal(out.imageid, 'sha256:cc');
  assert.deepEqual(JSON.parse(out.metadata), metadata);
  const text = lib.summary(metadata, 2.25);
  assert.match(text, /1\/2 steps cached, 2\.3 s; pulled 1\.5 kB, pushed 0 B/);
  assert.match(text, /\| build 2\/3 RUN make \\\| tee \| yes \(registry r\/app:cache\) \| 0 \| {2}\|/);
  assert.match(text, /\| build 3\/3 COPY \. \. \| no \| 1\.5 \| src\/a\\\|b\.go changed \(and 2 more\) \|/);
  assert.match(text, /\| \/root\/\.cache\/go-build \| 2\.5 MB from registry r\/app:cache \| delta, 1\.2 kB \|/);
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-out-')), 'out');
  lib.setOutput({GITHUB_OUTPUT: file}, 'metadata', '{\n"a": 1\n}');
  assert.match(fs.readFileSync(file, 'utf8'), /^metadata<<(kiln_\w+)\n\{\n"a": 1\n\}\n\1\n$/);
});

test('log groups: one per stage, closed before other lines', () => {
  let text = '';
  const groups = new lib.StageGroups((t) => { text += t; });
  groups.feed('#1 [deps 2/3] RUN a\n#1 DONE 0.1s\n#2 [build 2/2] COP');
  groups.feed('Y . .\n#2 DONE 0.2s\nbuilt sha256:x\n');
  groups.end();
  assert.equal(text, '::group::deps\n#1 [deps 2/3] RUN a\n#1 DONE 0.1s\n::endgroup::\n' +
    '::group::build\n#2 [build 2/2] COPY . .\n#2 DONE 0.2s\n::endgroup::\nbuilt sha256:x\n');
});
