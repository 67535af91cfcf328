// Package knative is lap's Knative sandbox backend. Each agent is a Knative
// Service whose base revision holds the default route; each sandbox is a
// revision of that Service with min-scale = max-scale = 1, reached through
// a 0% traffic tag. Suspending a sandbox takes its tag out of the route, so
// Knative scales it to zero; resuming puts the tag back.
//
// The objects themselves are built, without I/O, by knative/resources.
// This package owns the client layer that writes and watches them, on the
// generated serving clientset, one concern per file:
//
//   - backend.go: the Backend, its clients and informers (construction,
//     preflight, Close);
//   - params.go: the builders' Params and harness images from lap's
//     configuration;
//   - agent.go: an agent's Service (EnsureAgent, DeleteAgent);
//   - sandbox.go: a sandbox's life (Provision, Suspend, Resume, Destroy);
//   - service.go: the serialised, conflict-retried writes to an agent's
//     Service that every operation above goes through;
//   - secrets.go: the agent's and each sandbox's Secret, and the harness
//     token read back from them;
//   - locate.go: finding sandboxes in the informers' caches (List for
//     adoption, Destroy of a bare record) and their endpoints;
//   - wait.go: waits on informer events for what Knative reports;
//   - probe.go: the readiness probe of a sandbox's harness;
//   - logs.go: a sandbox's pod log.
package knative
