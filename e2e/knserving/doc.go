// Package knserving pins the Knative Serving release whose unmodified
// commands Knative in a box runs: `make box` builds
// knative.dev/serving/cmd/{controller,webhook,autoscaler,activator,queue}
// from this module (the go.mod's tool lines) into bin/knative/.
//
// It is a module of its own because Knative Serving's commands need
// their own dependency set (and the gorilla/websocket replace that
// knative.dev/serving's go.mod carries, which a dependency's replace
// lines cannot pass on); lap's main module only needs Knative's API
// types and clients.
package knserving
