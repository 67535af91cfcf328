// Package knative is lap's Knative sandbox backend. Each agent is a Knative
// Service whose base revision holds the default route; each sandbox is a
// revision of that Service with min-scale = max-scale = 1, reached through
// a 0% traffic tag. Suspending a sandbox takes its tag out of the route, so
// Knative scales it to zero; resuming puts the tag back.
//
// The package has two layers: pure builders of the Kubernetes objects
// (builders.go), tested against Knative's own defaulting and validation,
// and a client layer (backend.go) on the generated serving clientset that
// serialises each agent's template updates and waits on informers.
package knative
