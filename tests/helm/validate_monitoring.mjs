// Validates ServiceMonitors (a JSON list, from validate.py) against the schema the
// @kubernetes-models/prometheus-operator package generates from prometheus-operator's API types:
// field types, required fields and enums. That package's schemas allow unknown fields, so a
// misspelt optional field is not caught here. Exits 1 on any problem.
//
// Usage: node validate_monitoring.mjs NPM_PREFIX SERVICEMONITORS_JSON
// (the package lives in the tools cache, not next to this file, so it is imported by path).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [prefix, input] = process.argv.slice(2);
const models = join(prefix, "node_modules/@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/index.js");
const { ServiceMonitor } = await import(pathToFileURL(models).href);
const documents = JSON.parse(readFileSync(input, "utf8"));
let problems = 0;
for (const doc of documents) {
  try {
    new ServiceMonitor(doc).validate();
  } catch (error) {
    problems += 1;
    console.log(`INVALID ServiceMonitor/${doc.metadata?.name}: ${error.message}`);
  }
}
console.log(`validate_monitoring.mjs: ${documents.length} ServiceMonitor(s), ${problems} problem(s)`);
process.exit(problems ? 1 : 0);
