// Drives @actions/cache against a kiln cache server. Usage:
//   node harness.mjs save    <dir> <key>
//   node harness.mjs restore <dir> <key> [restoreKey...]
// The service, token and API version come from the environment, as on a runner.
// Prints one JSON line: {"op": ..., "result": ...}; exits 0 unless the call threw.
import * as cache from '@actions/cache';

const [op, dir, key, ...restoreKeys] = process.argv.slice(2);
const paths = [dir];
let result;
try {
  if (op === 'save') {
    result = await cache.saveCache(paths, key);
  } else if (op === 'restore') {
    result = (await cache.restoreCache(paths, key, restoreKeys)) ?? null;
  } else if (op === 'lookup') {
    result = (await cache.restoreCache(paths, key, restoreKeys, { lookupOnly: true })) ?? null;
  } else {
    throw new Error(`unknown operation ${op}`);
  }
} catch (err) {
  process.stdout.write(JSON.stringify({ op, error: String(err && err.message || err) }) + '\n');
  process.exit(2);
}
process.stdout.write(JSON.stringify({ op, result }) + '\n');
