// actions/cache's main step: restore <path> by <key>, else by the first restore-key prefix.
import {pathToFileURL} from 'url';

// act copies the action away from the test's node_modules: the test names that directory
const modules = process.env.KILN_TEST_NODE_MODULES;
const cache = await import(pathToFileURL(`${modules}/@actions/cache/lib/cache.js`).href);

const path = process.env.INPUT_PATH.trim();
const key = process.env.INPUT_KEY.trim();
const restoreKeys = (process.env['INPUT_RESTORE-KEYS'] || '').split('\n').map((k) => k.trim()).filter(Boolean);
const hit = await cache.restoreCache([path], key, restoreKeys);
console.log(`cache ${hit ? `restored from ${hit}` : 'not found'} for ${path}`);
