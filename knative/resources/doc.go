// Package resources builds the Kubernetes and Knative objects of lap's
// Knative backend, as Knative's own reconcilers lay their builders out
// (knative.dev/serving/pkg/reconciler/*/resources): pure functions from an
// agent or sandbox spec and the cluster-wide Params to an object, with no
// I/O and no clients. It owns the names and labels those objects carry
// (names.go), the agent's Service (service.go), the base and sandbox
// revision templates (revision.go), the agent's and each sandbox's Secret
// (secret.go), and the edits of a route's traffic (traffic.go).
//
// Every object built here passes Knative's own SetDefaults and Validate as
// lap's manifests configure Knative (validation_test.go); the client layer
// in package knative writes them and nothing else.
package resources
