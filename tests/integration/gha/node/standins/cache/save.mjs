// actions/cache's post step: save <path> under <key> (an existing key is left as it is).
import {pathToFileURL} from 'url';

// act copies the action away from the test's node_modules: the test names that directory
const modules = process.env.KILN_TEST_NODE_MODULES;
const cache = await import(pathToFileURL(`${modules}/@actions/cache/lib/cache.js`).href);

const path = process.env.INPUT_PATH.trim();
const key = process.env.INPUT_KEY.trim();
try {
  await cache.saveCache([path], key);
  console.log(`cache saved as ${key}`);
} catch (err) {
  console.log(`cache not saved: ${err.message}`);
}
