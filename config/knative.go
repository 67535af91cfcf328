package config

// KnativeConfig holds the settings of the Knative backend (knative/).
type KnativeConfig struct{}

var knativeSettings = []Setting{}
