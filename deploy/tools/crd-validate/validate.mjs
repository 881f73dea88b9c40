// Validate custom resources against schemas generated from their CRDs (@kubernetes-models/*).
// Reads a JSON array of objects on stdin; prints a JSON array of {kind, name, ok, error}.
// Exits 2 for a kind it has no schema for, so a test cannot pass by validating nothing.
import { readFileSync } from "node:fs";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";

const models = {
  "keda.sh/v1alpha1/ScaledObject": ScaledObject,
  "keda.sh/v1alpha1/TriggerAuthentication": TriggerAuthentication,
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
  "monitoring.coreos.com/v1/PodMonitor": PodMonitor,
};

const docs = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const doc of docs) {
  const Model = models[`${doc.apiVersion}/${doc.kind}`];
  if (!Model) {
    console.error(`no schema for ${doc.apiVersion} ${doc.kind}`);
    process.exit(2);
  }
  try {
    new Model(doc).validate();
    results.push({ kind: doc.kind, name: doc.metadata?.name, ok: true, error: null });
  } catch (err) {
    results.push({ kind: doc.kind, name: doc.metadata?.name, ok: false, error: String(err.message ?? err) });
  }
}
console.log(JSON.stringify(results));
